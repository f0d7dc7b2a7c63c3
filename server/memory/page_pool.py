"""The unified pool's bookkeeping: page ids handed to owners under one budget. No torch here.

Idle things that hold pages (adapters no running sequence uses, cached KV blocks no running
sequence holds) stay in the pool until pages are needed. Then the pool asks its reclaimers and
evicts the least recently used idle thing first, whoever owns it: one LRU across adapters and KV
blocks. "Use" is stamped by the pool's logical clock (tick), so the order is exact and testable.
"""

from collections import deque
from dataclasses import dataclass
from typing import Protocol

KV = "kv"
ADAPTER = "adapter"


class OutOfPages(RuntimeError):
    pass


@dataclass(slots=True)
class PoolStats:
    total: int
    free: int
    kv: int  # KV pages held by sequences (running, or their pages shared through the prefix cache)
    adapter: int  # adapter pages, pinned or idle
    cached: int = 0  # idle cached KV blocks: kept for reuse, evictable; free + kv + adapter + cached == total


class Reclaimer(Protocol):
    """Something holding idle pages it can give back on demand (idle adapters, idle cached KV blocks)."""

    owner: str  # KV or ADAPTER: whose pages these are

    def reclaimable(self) -> int:
        """Pages that evicting every idle thing would free."""
        ...

    def oldest(self) -> int | None:
        """Last-use tick of what evict_oldest would evict next; None when nothing is idle."""
        ...

    def evict_oldest(self) -> int:
        """Evict that one thing; the pages it freed."""
        ...


class PagePool:
    """Fixed-size pages of one preallocated buffer; KV blocks and adapter weights both draw from here."""

    def __init__(self, num_pages: int):
        if num_pages < 1:
            raise ValueError("the pool needs at least one page")
        self.num_pages = num_pages
        self._free: deque[int] = deque(range(num_pages))
        self._owner: dict[int, str] = {}
        self._used = {KV: 0, ADAPTER: 0}
        self.reclaimers: list[Reclaimer] = []
        self._clock = 0

    def add_reclaimer(self, reclaimer: Reclaimer) -> None:
        self.reclaimers.append(reclaimer)

    def tick(self) -> int:
        """The next value of the logical clock that orders last uses."""
        self._clock += 1
        return self._clock

    @property
    def num_free(self) -> int:
        return len(self._free)

    def num_available(self) -> int:
        """Free pages plus those idle adapters and idle cached KV blocks would give back."""
        return len(self._free) + sum(r.reclaimable() for r in self.reclaimers)

    def reclaim(self, n: int) -> None:
        """Evict idle things, globally least recently used first, until n pages are free (or nothing is idle)."""
        while len(self._free) < n:
            ticks = [(t, i) for i, r in enumerate(self.reclaimers) if (t := r.oldest()) is not None]
            if not ticks:
                return
            self.reclaimers[min(ticks)[1]].evict_oldest()

    def allocate(self, n: int, owner: str) -> list[int]:
        if n > len(self._free):
            self.reclaim(n)
        if n > len(self._free):
            raise OutOfPages(f"asked for {n} pages, {len(self._free)} free")
        pages = [self._free.popleft() for _ in range(n)]
        for p in pages:
            self._owner[p] = owner
        self._used[owner] += n
        return pages

    def free(self, pages: list[int]) -> None:
        for p in pages:
            owner = self._owner.pop(p)  # KeyError on a double free: a bookkeeping bug, never silent
            self._used[owner] -= 1
            self._free.append(p)

    def stats(self) -> PoolStats:
        cached = sum(r.reclaimable() for r in self.reclaimers if r.owner == KV)
        return PoolStats(self.num_pages, len(self._free), self._used[KV] - cached, self._used[ADAPTER], cached)
