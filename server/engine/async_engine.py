"""The engine on its own thread, driven from asyncio: submit, stream deltas, abort.

The event loop never runs model code: requests and aborts cross to the engine thread through a
locked inbox, deltas come back through loop.call_soon_threadsafe onto per-request queues.

Nothing one request does may stop the thread: whatever its admission, a call or a step raises
fails the requests it concerns and the loop goes on. If the loop itself dies (a bug in the
recovery path), every open stream gets EngineDead, `alive` turns False, and on_death runs so
the server can report unhealthy and exit non-zero for its supervisor to restart it.
"""

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from kernels.cpu.openmp import TeamlessExecutor, release_team
from server.adapters.registry import AdapterRegistry
from server.adapters.types import AdapterRef, AdapterWeights
from server.engine.llm_engine import EngineRequest, LLMEngine
from server.engine.outputs import SequenceDelta
from server.memory.adapter_pages import ResidencyStats
from server.memory.page_pool import PoolStats
from server.model.norm_gains import projection_norm_gains
from server.structured import GrammarCompiler

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Stream:
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    open_seqs: int  # sequences the consumer has not seen finish (event-loop side)
    engine_open: int  # sequences the engine has not finished (engine-thread side)


class EngineDead(RuntimeError):
    pass


class EngineBusy(RuntimeError):
    """Too many calls are waiting for the engine thread."""


MAX_PENDING_CALLS = 256
UNHEALTHY_AFTER = 3  # consecutive failed steps before `healthy` says no


T = TypeVar("T")


def _settle(fut: asyncio.Future, result, error: BaseException | None) -> None:
    if fut.done():  # the caller gave up (cancelled)
        return
    if error is None:
        fut.set_result(result)
    else:
        fut.set_exception(error)


class AsyncEngine:
    def __init__(self, engine: LLMEngine, on_death: Callable[[BaseException], None] | None = None):
        self.engine = engine
        self.on_death = on_death
        self.failed_steps = 0  # consecutive; a good step resets it
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._inbox: list[EngineRequest] = []
        self._aborts: list[str] = []
        self._calls: list[tuple[Callable[[], object], asyncio.Future]] = []
        self._streams: dict[str, _Stream] = {}
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="loraplex-engine", daemon=True)

    # lifecycle

    def start(self) -> None:
        """Call it on the thread that built the engine: that thread's OpenMP team ends here (see kernels.cpu.openmp)."""
        release_team()
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @staticmethod
    def worker_pool() -> TeamlessExecutor:
        """A thread pool for work off the event loop (adapter loads, grammar compiles): its threads end any
        OpenMP team after each job, so the engine thread's team stays the only one (kernels.cpu.openmp)."""
        return TeamlessExecutor(thread_name_prefix="loraplex-io")

    @property
    def alive(self) -> bool:
        return self._error is None and (self._thread.is_alive() or not self._thread.ident)

    @property
    def healthy(self) -> bool:
        """Alive and its steps are not all failing: what /health reports."""
        return self.alive and self.failed_steps < UNHEALTHY_AFTER

    # the facade: all that the HTTP layer, the routers and Ray replicas use of the engine

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def grammar_compiler(self) -> GrammarCompiler:
        """Structured-output grammars for this model's tokenizer, logits width and end-of-sequence ids."""
        e = self.engine
        return GrammarCompiler(e.tokenizer, e.checkpoint.config.vocab_size, e.outputs.eos_ids)

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def max_batch_tokens(self) -> int:
        return self.engine.config.max_batch_tokens

    @property
    def registry(self) -> AdapterRegistry:
        """Adapter names -> refs; thread-safe, so the event loop may register and look up."""
        return self.engine.registry

    def check(self, request: EngineRequest) -> None:
        """ValueError (UnknownAdapter for a name not registered) naming what is wrong; nothing changes."""
        self.engine.check_request(request)

    def pool_stats(self) -> PoolStats:
        return self.engine.pool.book.stats()

    def adapter_stats(self) -> ResidencyStats:
        return self.engine.adapters.pages.stats

    def adapters_pinned(self) -> int:
        return self.engine.adapters.pages.num_pinned()

    def is_resident(self, adapter_id: int) -> bool:
        return self.engine.adapters.pages.is_resident(adapter_id)

    def on_adapter_load(self, observe: Callable[[float], None]) -> None:
        """observe(seconds) after each cold load of an adapter into the pool (on the engine thread)."""
        self.engine.adapters.on_load = observe

    def token_embeddings(self) -> torch.Tensor:
        """(V, D) the base model's input embeddings (the embedding router reads them)."""
        return self.engine.runner.model.model.embed_tokens.weight

    def norm_gains(self) -> tuple[dict[tuple[int, str], torch.Tensor], float]:
        """The RMSNorm gains before q/k/v and gate/up, and eps (per-token Arrow's proxy inputs read them)."""
        return projection_norm_gains(self.engine.runner.model)

    def adapter_weights(self, ref: AdapterRef) -> AdapterWeights:
        return self.engine.registry.weights(ref)

    def features_now(self, prompt_ids: list[int], keys: set) -> dict:
        """The routing pass (see LLMEngine.prompt_features); on the engine thread or before it starts."""
        return self.engine.prompt_features(prompt_ids, keys)

    def unregister_now(self, name: str) -> AdapterRef:
        """Unload an adapter (KeyError if not registered); on the engine thread or before it starts."""
        return self.engine.adapters.unregister(name)

    # requests

    async def generate(self, request: EngineRequest) -> AsyncIterator[SequenceDelta]:
        """Stream a request's deltas until all its sequences finish. Leaving early aborts it."""
        if self._error is not None:
            raise EngineDead(f"the engine stopped: {self._error!r}")
        n = request.params.n  # the caller checked it; the engine thread checks again when it adds it
        stream = _Stream(asyncio.Queue(), asyncio.get_running_loop(), n, n)
        with self._lock:
            self._streams[request.request_id] = stream
            self._inbox.append(request)
        self._wake.set()
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    stream.open_seqs -= 1
                    if stream.open_seqs == 0:
                        finished = True
                        return
        finally:
            if not finished:
                self.abort(request.request_id)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run fn() on the engine thread between two steps (model code never runs beside a step); fn uses
        the `*_now` methods."""
        if self._error is not None:
            raise EngineDead(f"the engine stopped: {self._error!r}")
        fut = asyncio.get_running_loop().create_future()
        with self._lock:
            if len(self._calls) >= MAX_PENDING_CALLS:
                raise EngineBusy(f"{len(self._calls)} calls already wait for the engine")
            self._calls.append((fn, fut))
        self._wake.set()
        return await fut

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborts.append(request_id)
        self._wake.set()

    # engine thread

    def _deliver(self, deltas: list[SequenceDelta]) -> None:
        for d in deltas:
            stream = self._streams.get(d.request_id)
            if stream is None:
                continue
            _post(stream.loop, stream.queue.put_nowait, d)
            if d.finish_reason is not None:
                stream.engine_open -= 1
                if stream.engine_open == 0:
                    with self._lock:
                        self._streams.pop(d.request_id, None)

    def _drain_inbox(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
            calls, self._calls = self._calls, []
        for fn, fut in calls:
            try:
                result, error = fn(), None
            except Exception as e:  # the caller's problem, not the engine's
                result, error = None, e
            _post(fut.get_loop(), _settle, fut, result, error)
        for req in inbox:
            try:
                self.engine.add_request(req)
            except Exception as e:  # raced with a change (adapter unloaded) or a bug: fail only this request
                if not isinstance(e, ValueError):
                    log.exception("adding request %s failed", req.request_id)
                self._fail_stream(req.request_id, e)
        for rid in aborts:
            try:
                self.engine.abort(rid)  # its consumer has left: nobody reads the abort deltas
            except Exception:
                log.exception("aborting %s failed", rid)
            with self._lock:
                self._streams.pop(rid, None)

    def _fail_stream(self, request_id: str, error: BaseException) -> None:
        with self._lock:
            stream = self._streams.pop(request_id, None)
        if stream:
            _post(stream.loop, stream.queue.put_nowait, error)

    def _loop(self) -> None:
        try:
            while not self._stop:
                self._drain_inbox()
                if not self.engine.has_work():
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                try:
                    deltas = self.engine.step()
                    self.failed_steps = 0
                except Exception as e:  # a bug hit this step: fail its requests, keep serving the rest
                    log.exception("engine step failed")
                    self.failed_steps += 1
                    deltas = self.engine.fail_step(e)
                self._deliver(deltas)
        except BaseException as e:  # the recovery itself failed: fail every open stream instead of hanging it
            log.critical("engine loop died", exc_info=e)
            self._error = e
            dead = EngineDead(f"the engine stopped: {e!r}")
            with self._lock:
                streams, self._streams = list(self._streams.values()), {}
                calls, self._calls = self._calls, []
            for s in streams:
                _post(s.loop, s.queue.put_nowait, dead)
            for _, fut in calls:
                _post(fut.get_loop(), _settle, fut, None, dead)
            if self.on_death is not None:
                self.on_death(e)


def _post(loop: asyncio.AbstractEventLoop, fn: Callable, *args) -> None:
    """Hand fn to a client's event loop; one that has closed (its client is gone) is skipped."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)
