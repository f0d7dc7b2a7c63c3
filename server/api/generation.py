"""The engine requests behind one HTTP request, merged into one stream of (choice index, delta).

A Generation owns its admission ticket and its stats. close() may come at any point (done,
client gone, server shutting down): it aborts whatever still runs, which frees its KV pages.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.types import Receive

from server.api.request_stats import RequestStats
from server.api.state import Ticket
from server.engine.async_engine import AsyncEngine
from server.engine.llm_engine import EngineRequest
from server.engine.outputs import SequenceDelta

T = TypeVar("T")


class ClientGone(Exception):
    pass


class Generation:
    def __init__(self, engine: AsyncEngine, requests: list[EngineRequest], ticket: Ticket, stats: RequestStats):
        self.n = requests[0].params.n  # choices per prompt
        self.num_choices = self.n * len(requests)
        self._streams = [engine.generate(r) for r in requests]
        self._pumps: list[asyncio.Task] = []
        self.ticket = ticket
        self.stats = stats
        self.completed = False

    async def deltas(self) -> AsyncIterator[tuple[int, SequenceDelta]]:
        """Every delta of every choice, as the engine produces them."""
        if len(self._streams) == 1:
            async for d in self._streams[0]:
                yield self._seen(0, d)
        else:
            queue: asyncio.Queue = asyncio.Queue()
            self._pumps = [asyncio.create_task(self._pump(i, s, queue)) for i, s in enumerate(self._streams)]
            for _ in self._streams:
                while (item := await queue.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield self._seen(*item)
        self.completed = True

    @staticmethod
    async def _pump(prompt: int, stream: AsyncIterator[SequenceDelta], queue: asyncio.Queue) -> None:
        try:
            async for d in stream:
                queue.put_nowait((prompt, d))
        except Exception as e:
            queue.put_nowait(e)
        finally:
            queue.put_nowait(None)

    def _seen(self, prompt: int, d: SequenceDelta) -> tuple[int, SequenceDelta]:
        choice = prompt * self.n + d.index
        self.ticket.start()
        self.stats.on_delta(choice, d)
        return choice, d

    async def close(self) -> None:
        for t in self._pumps:
            t.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for s in self._streams:
            await s.aclose()  # type: ignore[attr-defined]  # an async generator: closing it aborts its request
        self.ticket.close()
        self.stats.report(self.completed)


async def unless_disconnected(work: Awaitable[T], receive: Receive) -> T:
    """Run work; if the client disconnects first, cancel it and raise ClientGone."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise ClientGone()
    finally:
        # the work must be over before anyone closes the streams it iterates
        for t in (task, watcher):
            t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
