import pytest

from server.memory.block_manager import BlockManager, blocks_for
from server.memory.page_pool import ADAPTER, KV, OutOfPages, PagePool


def test_pages_are_handed_out_once_and_come_back():
    pool = PagePool(8)
    a = pool.allocate(3, KV)
    b = pool.allocate(2, ADAPTER)
    assert len(set(a) | set(b)) == 5
    s = pool.stats()
    assert (s.total, s.free, s.kv, s.adapter) == (8, 3, 3, 2)
    pool.free(a)
    pool.free(b)
    assert pool.stats().free == 8 and pool.stats().kv == pool.stats().adapter == 0


def test_over_allocation_and_double_free_are_refused():
    pool = PagePool(2)
    pages = pool.allocate(2, KV)
    with pytest.raises(OutOfPages):
        pool.allocate(1, KV)
    pool.free(pages)
    with pytest.raises(KeyError):
        pool.free(pages)


def test_block_manager_grows_tables_by_whole_blocks():
    pool = PagePool(10)
    bm = BlockManager(pool, block_size=4)
    table: list[int] = []
    bm.grow(table, 5)
    assert len(table) == 2 == blocks_for(5, 4)
    bm.grow(table, 8)
    assert len(table) == 2
    bm.grow(table, 9)
    assert len(table) == 3
    assert bm.slot(table, 9) == table[2] * 4 + 1
    assert not bm.can_grow(table, 4 * 11)
    bm.release(table)
    assert table == [] and pool.num_free == 10
