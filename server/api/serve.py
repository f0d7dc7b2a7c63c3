"""uvicorn with a drain: the first SIGTERM/SIGINT stops admitting (503) and waits for in-flight
requests up to the drain timeout, then uvicorn shuts down and the process exits 0. A second signal
stops at once. If the engine thread dies, /health turns 503 at once and the process exits 1, so a
supervisor (systemd, Kubernetes, compose `restart:`) starts a fresh one.

Connections are bounded: uvicorn's limit_concurrency (503 past --max-connections), keep-alive
timeout, and a reaper for connections that never finish sending their headers (uvicorn has no
header timeout; slow clients would otherwise hold sockets until file descriptors run out).
"""

import logging
import resource
import signal
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from server.api.context import ServerContext
from server.api.state import Phase

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ctx: ServerContext):
        super().__init__(config)
        self.ctx = ctx
        self.exit_code = 0
        self._reading_since: dict[int, float] = {}  # id(connection) -> monotonic time it started a request

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # never recorded in _captured_signals: uvicorn would re-raise it at exit and the status would not be 0
        state = self.ctx.state
        if state.phase is Phase.DRAINING or self.should_exit:
            log.warning("second %s: stopping now", signal.Signals(sig).name)
            self.should_exit = self.force_exit = True
            return
        timeout = self.ctx.settings.drain_timeout
        name = signal.Signals(sig).name
        log.info("%s: draining %d in-flight sequences (at most %.0fs)", name, state.in_flight, timeout)
        state.begin_drain(timeout)

    async def on_tick(self, counter: int) -> bool:
        if not self.ctx.engine.alive and not self.should_exit:
            log.critical("the engine thread died: exiting with status 1 so a supervisor restarts the server")
            self.exit_code = 1
            self.should_exit = self.force_exit = True
        if self.ctx.state.drained():
            if self.ctx.state.in_flight:
                log.warning("drain timeout: %d sequences still in flight are cut off", self.ctx.state.in_flight)
            self.should_exit = True
        if counter % 10 == 0:  # ticks come every 0.1 s
            self._reap_slow_headers()
        return await super().on_tick(counter)

    def _reap_slow_headers(self) -> None:
        """Close connections that have been sending one request's headers for longer than the timeout."""
        limit = self.ctx.settings.header_timeout_s
        now, seen = time.monotonic(), {}
        for conn in list(self.server_state.connections):
            cycle = getattr(conn, "cycle", None)
            idle = getattr(conn, "timeout_keep_alive_task", None) is not None
            if idle or (cycle is not None and not cycle.response_complete):
                continue  # waiting under keep-alive's own timer, or a request is being served
            since = seen[id(conn)] = self._reading_since.get(id(conn), now)
            if limit and now - since > limit:
                log.info("closing a connection that sent no complete request headers in %.0fs", limit)
                conn.transport.close()
        self._reading_since = seen


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards wanted (never above the hard one); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def serve(app: FastAPI, log_level: str) -> int:
    """Run until drained or stopped; the process's exit status."""
    ctx: ServerContext = app.state.loraplex
    s = ctx.settings
    fds = raise_fd_limit(s.max_connections + 256)
    limit = min(s.max_connections, max(16, fds - 128))  # file descriptors left for the model, logs, kernels
    if limit < s.max_connections:
        log.warning("--max-connections %d lowered to %d: the open-files limit is %d", s.max_connections, limit, fds)
    config = uvicorn.Config(
        app, host=s.host, port=s.port, log_level=log_level, timeout_graceful_shutdown=1, lifespan="on",
        limit_concurrency=limit, timeout_keep_alive=s.keep_alive_s, h11_max_incomplete_event_size=16 * 1024,
    )
    server = DrainingServer(config, ctx)
    server.run()
    return server.exit_code
