"""The unified pool's bookkeeping: page ids handed to owners under one budget. No torch here.

Idle things that hold pages (adapters no running sequence uses, cached KV blocks no running
sequence holds) stay in the pool until pages are needed. Then the pool asks its reclaimers and
evicts the idle thing with the smallest stamp first, whoever owns it: one policy across adapters
and KV blocks (eviction.py: LRU by default, or cost-aware). Uses are stamped by the pool's logical
clock, so the order is exact and testable.
"""

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from server.memory.eviction import ADAPTER, KV, Eviction, Stamp

__all__ = ["ADAPTER", "KV", "OutOfPages", "PagePool", "PoolStats", "Reclaimer"]


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

    def oldest(self) -> Stamp | None:
        """Stamp of what evict_oldest would evict next (smallest first); None when nothing is idle."""
        ...

    def evict_oldest(self) -> int:
        """Evict that one thing; the pages it freed."""
        ...


class PagePool:
    """Fixed-size pages of one preallocated buffer; KV blocks and adapter weights both draw from here."""

    def __init__(self, num_pages: int, eviction: Eviction | None = None):
        if num_pages < 1:
            raise ValueError("the pool needs at least one page")
        self.num_pages = num_pages
        self._free: deque[int] = deque(range(num_pages))
        self._owner: dict[int, str] = {}
        self._used = {KV: 0, ADAPTER: 0}
        self.reclaimers: list[Reclaimer] = []
        self.eviction = eviction or Eviction()

    def add_reclaimer(self, reclaimer: Reclaimer) -> None:
        self.reclaimers.append(reclaimer)

    def stamp(self, owner: str, uses: int = 1) -> Stamp:
        """A use of an evictable thing of this owner, now: what orders evictions (eviction.py)."""
        return self.eviction.stamp(owner, uses)

    @property
    def num_free(self) -> int:
        return len(self._free)

    def num_available(self) -> int:
        """Free pages plus those idle adapters and idle cached KV blocks would give back."""
        return len(self._free) + sum(r.reclaimable() for r in self.reclaimers)

    def reclaim(self, n: int) -> None:
        """Evict idle things, smallest stamp first across reclaimers, until n pages are free (or nothing is idle)."""
        while len(self._free) < n:
            stamps = [(s, i) for i, r in enumerate(self.reclaimers) if (s := r.oldest()) is not None]
            if not stamps:
                return
            stamp, i = min(stamps)
            self.reclaimers[i].evict_oldest()
            self.eviction.evicted(stamp)

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
