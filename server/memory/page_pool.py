"""The unified pool's bookkeeping: page ids handed to owners under one budget. No torch here."""

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
    kv: int
    adapter: int


class Reclaimer(Protocol):
    """Something holding pages it can give back on demand (idle adapters)."""

    def reclaimable(self) -> int: ...

    def evict_idle(self, pages_wanted: int) -> int: ...


class PagePool:
    """Fixed-size pages of one preallocated buffer; KV blocks and adapter weights both draw from here."""

    def __init__(self, num_pages: int):
        if num_pages < 1:
            raise ValueError("the pool needs at least one page")
        self.num_pages = num_pages
        self._free: deque[int] = deque(range(num_pages))
        self._owner: dict[int, str] = {}
        self._used = {KV: 0, ADAPTER: 0}
        self.reclaimer: Reclaimer | None = None

    @property
    def num_free(self) -> int:
        return len(self._free)

    def num_available(self) -> int:
        """Free pages plus those idle adapters would give back."""
        return len(self._free) + (self.reclaimer.reclaimable() if self.reclaimer else 0)

    def allocate(self, n: int, owner: str) -> list[int]:
        if n > len(self._free) and self.reclaimer is not None:
            self.reclaimer.evict_idle(n - len(self._free))
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
        return PoolStats(self.num_pages, len(self._free), self._used[KV], self._used[ADAPTER])
