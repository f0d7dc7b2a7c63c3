"""Admission: the server's phase and its in-flight generation requests.

A request is *waiting* from admission until its first token, then *running* until its response is
done. Both count sequences (prompts x n), not HTTP requests: `max_queue` bounds the waiting ones
(429 beyond it; a request larger than the queue is admitted only into an empty one); draining
admits nothing (503) and ends when nothing is in flight or the drain deadline passes. Everything
here runs on the event loop.
"""

import time
from enum import Enum

from server.api.errors import QueueFull, ServiceUnavailable


class Phase(Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


class ServerState:
    def __init__(self, max_queue: int, retry_after_s: int = 1):
        self.phase = Phase.STARTING
        self.max_queue = max_queue
        self.retry_after = {"Retry-After": str(retry_after_s)}
        self.waiting = 0
        self.running = 0
        self.drain_deadline: float | None = None  # monotonic seconds

    @property
    def in_flight(self) -> int:
        return self.waiting + self.running

    def admit(self, seqs: int = 1) -> "Ticket":
        if self.phase is not Phase.READY:
            what = "starting" if self.phase is Phase.STARTING else "shutting down"
            raise ServiceUnavailable(f"the server is {what}", code=self.phase.value, headers=self.retry_after)
        if self.waiting and self.waiting + seqs > self.max_queue or self.max_queue == 0:
            raise QueueFull(
                f"too many sequences waiting ({self.waiting}); retry later", headers=self.retry_after
            )
        self.waiting += seqs
        return Ticket(self, seqs)

    def ready(self) -> None:
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY

    def begin_drain(self, timeout_s: float) -> None:
        if self.phase is not Phase.DRAINING:
            self.phase = Phase.DRAINING
            self.drain_deadline = time.monotonic() + timeout_s

    def drained(self) -> bool:
        """Draining and done: nothing left in flight, or out of time."""
        if self.phase is not Phase.DRAINING or self.drain_deadline is None:
            return False
        return self.in_flight == 0 or time.monotonic() >= self.drain_deadline


class Ticket:
    """One admitted request. start() on its first token; close() when its response is over. Both idempotent."""

    def __init__(self, state: ServerState, seqs: int = 1):
        self._state = state
        self._seqs = seqs
        self._stage = "waiting"

    def start(self) -> None:
        if self._stage == "waiting":
            self._state.waiting -= self._seqs
            self._state.running += self._seqs
            self._stage = "running"

    def close(self) -> None:
        if self._stage == "waiting":
            self._state.waiting -= self._seqs
        elif self._stage == "running":
            self._state.running -= self._seqs
        self._stage = "closed"
