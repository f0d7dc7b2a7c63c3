"""Adapter weights in the unified pool: packing into pages, LRU residency, pins. No torch here.

An adapter's tensors (what its format pages in per targeted module of each layer: A and B, for DoRA
also its per-channel scale) are packed into whole pages
so that no tensor crosses a page boundary: every tensor is then one contiguous run of the pool,
which kernels read through its offset. Adapters used by a running sequence are pinned and never
evicted; idle ones are evicted when KV blocks or other adapters need pages, in the pool's one order across idle adapters
and idle cached KV blocks (page_pool.py, eviction.py): an adapter's last use is when its last
running sequence released it.
"""

from collections import OrderedDict
from dataclasses import dataclass

from server.memory.eviction import Stamp
from server.memory.page_pool import ADAPTER, PagePool

TensorKey = tuple[int, str, str]  # (layer, module, factor): "a", "b", or a format's own (DoRA's "scale")


@dataclass(slots=True)
class Placement:
    pages: list[int]  # pool page ids, in order
    offsets: dict[TensorKey, int]  # flat element offset of each tensor in the pool


@dataclass(slots=True)
class ResidencyStats:
    resident: int = 0
    pages: int = 0
    loads: int = 0
    evictions: int = 0
    hits: int = 0


def pack(sizes: dict[TensorKey, int], page_elems: int) -> tuple[int, dict[TensorKey, tuple[int, int]]]:
    """First-fit decreasing: (pages needed, key -> (page index, offset in page)). Sizes in elements."""
    free: list[int] = []  # room left in each page
    where: dict[TensorKey, tuple[int, int]] = {}
    for key, n in sorted(sizes.items(), key=lambda kv: -kv[1]):
        if n > page_elems:
            raise ValueError(f"tensor {key} of {n} elements does not fit a page of {page_elems}")
        page = next((i for i, room in enumerate(free) if room >= n), None)
        if page is None:
            free.append(page_elems)
            page = len(free) - 1
        where[key] = (page, page_elems - free[page])
        free[page] -= n
    return len(free), where


@dataclass(slots=True)
class _Resident:
    placement: Placement
    pins: int = 0
    last_use: Stamp = (0.0, 0)  # the pool's stamp when it was last acquired or released


class AdapterPages:
    owner = ADAPTER

    def __init__(self, pool: PagePool, page_elems: int):
        self.pool = pool
        self.page_elems = page_elems
        self._resident: OrderedDict[int, _Resident] = OrderedDict()  # adapter id -> placement, LRU first
        self.stats = ResidencyStats()
        pool.add_reclaimer(self)

    def is_resident(self, adapter_id: int) -> bool:
        return adapter_id in self._resident

    def placement(self, adapter_id: int) -> Placement:
        return self._resident[adapter_id].placement

    def num_pinned(self) -> int:
        """Adapters pinned by running sequences now (0 when the engine is idle)."""
        return sum(1 for r in self._resident.values() if r.pins)

    def reclaimable(self) -> int:
        return sum(len(r.placement.pages) for r in self._resident.values() if r.pins == 0)

    def _idle_lru(self) -> int | None:
        idle = [(r.last_use, a) for a, r in self._resident.items() if r.pins == 0]
        return min(idle)[1] if idle else None

    def oldest(self) -> Stamp | None:
        adapter_id = self._idle_lru()
        return None if adapter_id is None else self._resident[adapter_id].last_use

    def evict_oldest(self) -> int:
        adapter_id = self._idle_lru()
        if adapter_id is None:
            return 0
        res = self._resident.pop(adapter_id)
        self.pool.free(res.placement.pages)
        self.stats.evictions += 1
        self._sync_stats()
        return len(res.placement.pages)

    def evict_idle(self, pages_wanted: int) -> int:
        """Evict idle adapters, smallest stamp first, until pages_wanted are freed; pages freed."""
        freed = 0
        while freed < pages_wanted and (n := self.evict_oldest()):
            freed += n
        return freed

    def acquire(self, adapter_id: int, sizes: dict[TensorKey, int]) -> tuple[Placement, bool] | None:
        """Pin an adapter, placing it if needed: (placement, newly placed) or None when no room now."""
        res = self._resident.get(adapter_id)
        if res is not None:
            self._resident.move_to_end(adapter_id)
            res.pins += 1
            res.last_use = self.pool.stamp(ADAPTER)
            self.stats.hits += 1
            return res.placement, False
        n_pages, where = pack(sizes, self.page_elems)
        if n_pages > self.pool.num_available():
            return None
        pages = self.pool.allocate(n_pages, ADAPTER)  # evicts idle adapters and cached KV blocks, LRU first
        offsets = {k: pages[p] * self.page_elems + off for k, (p, off) in where.items()}
        placement = Placement(pages, offsets)
        self._resident[adapter_id] = _Resident(placement, pins=1, last_use=self.pool.stamp(ADAPTER))
        self.stats.loads += 1
        self._sync_stats()
        return placement, True

    def release(self, adapter_id: int) -> None:
        res = self._resident[adapter_id]
        assert res.pins > 0, f"adapter {adapter_id} released more often than acquired"
        res.pins -= 1
        res.last_use = self.pool.stamp(ADAPTER)

    def drop(self, adapter_id: int) -> bool:
        """Free an idle adapter's pages now (unload); False if it is pinned."""
        res = self._resident.get(adapter_id)
        if res is None:
            return True
        if res.pins:
            return False
        del self._resident[adapter_id]
        self.pool.free(res.placement.pages)
        self._sync_stats()
        return True

    def _sync_stats(self) -> None:
        self.stats.resident = len(self._resident)
        self.stats.pages = sum(len(r.placement.pages) for r in self._resident.values())
