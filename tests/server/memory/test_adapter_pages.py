import pytest

from server.memory.adapter_pages import AdapterPages, pack
from server.memory.block_manager import BlockManager
from server.memory.page_pool import PagePool


def sizes(rank: int, layers: int = 2) -> dict:
    return {(layer, m, ab): rank * 8 for layer in range(layers) for m in ("q_proj", "v_proj") for ab in "ab"}


def test_pack_never_splits_a_tensor_and_fills_pages():
    n, where = pack({("t", i, "a"): s for i, s in enumerate([60, 50, 40, 30, 20])}, page_elems=100)
    assert n == 2
    for key, (_page, off) in where.items():
        assert off + {0: 60, 1: 50, 2: 40, 3: 30, 4: 20}[key[1]] <= 100
    with pytest.raises(ValueError, match="does not fit"):
        pack({(0, "q_proj", "a"): 101}, page_elems=100)


def test_offsets_are_disjoint_runs_of_the_pool():
    pool = PagePool(8)
    ap = AdapterPages(pool, page_elems=64)
    placement, new = ap.acquire(1, sizes(4))
    assert new and pool.stats().adapter == len(placement.pages)
    runs = sorted((off, off + 32) for off in placement.offsets.values())
    assert all(a_end <= b for (_, a_end), (b, _) in zip(runs, runs[1:], strict=False))
    assert all(off // 64 in placement.pages for off in placement.offsets.values())


def test_lru_eviction_skips_pinned_adapters():
    pool = PagePool(4)
    ap = AdapterPages(pool, page_elems=128)
    for a in (1, 2, 3, 4):
        ap.acquire(a, sizes(4, layers=1))  # 4 tensors of 32 elements: one page each
    assert ap.stats.resident == 4 and pool.num_free == 0
    ap.release(1)
    ap.release(2)
    assert ap.acquire(5, sizes(4, layers=1)) is not None  # 1 is the least recently used idle one (released first)
    assert not ap.is_resident(1) and ap.is_resident(2) and ap.stats.evictions == 1
    assert ap.acquire(6, sizes(4, layers=1)) is not None  # evicts 2
    assert not ap.is_resident(2)
    assert ap.acquire(7, sizes(4, layers=1)) is None  # everything left is pinned: wait, never evict in use
    assert ap.is_resident(3) and ap.is_resident(4)


def test_kv_blocks_reclaim_idle_adapter_pages():
    pool = PagePool(4)
    ap = AdapterPages(pool, page_elems=128)
    ap.acquire(1, sizes(8))  # 8 tensors of 64 elements: the whole pool
    assert pool.num_free == 0
    ap.release(1)
    bm = BlockManager(pool, block_size=4)
    table: list[int] = []
    assert bm.can_grow(table, 16)
    bm.grow(table, 16)
    assert len(table) == 4 and not ap.is_resident(1) and ap.stats.evictions == 1


def test_hits_and_drop():
    pool = PagePool(4)
    ap = AdapterPages(pool, page_elems=128)
    ap.acquire(1, sizes(4, layers=1))
    placement, new = ap.acquire(1, sizes(4, layers=1))
    assert not new and ap.stats.hits == 1
    assert not ap.drop(1)
    ap.release(1)
    ap.release(1)
    assert ap.drop(1) and pool.num_free == 4
