"""The pool's eviction policies without a model: LRU, and cost-aware GreedyDual across adapters and cached blocks."""

import random

import pytest

from server.memory.adapter_pages import AdapterPages
from server.memory.block_manager import BlockManager
from server.memory.eviction import ADAPTER, KV, Eviction, EvictionConfig
from server.memory.page_pool import PagePool
from server.memory.prefix_cache import PrefixCache

BS = 4
ONE_PAGE = {(0, "q_proj", "a"): 64}  # an adapter of one page (page_elems=64)
COST = EvictionConfig("cost", kv_page_cost_ms=20.0, adapter_page_cost_ms=1.0)


def make(num_pages, config=None):
    pool = PagePool(num_pages, Eviction(config))
    return pool, PrefixCache(pool, BS), AdapterPages(pool, page_elems=64)


def cached_block(pool, cache, first_token, identity=()):
    """One full block computed, registered and released: idle in the cache. Its page."""
    table = pool.allocate(1, KV)
    _, page = cache.register(table[0], None, list(range(first_token, first_token + BS)), identity)
    BlockManager(pool, BS, cache).release([page])
    return page


def idle_adapter(adapters, adapter_id):
    adapters.acquire(adapter_id, ONE_PAGE)
    adapters.release(adapter_id)


def evict_one(pool, cache, adapters) -> str:
    """Free one page by eviction; what went ('b<page>' for a block, 'a<id>' for an adapter)."""
    blocks = {p for p in cache._blocks}
    resident = {a for a in (1, 2, 3, 4, 5) if adapters.is_resident(a)}
    pool.reclaim(pool.num_free + 1)
    gone = [f"b{p}" for p in blocks if not cache.is_cached(p)] + [f"a{a}" for a in resident
                                                                   if not adapters.is_resident(a)]
    assert len(gone) == 1, gone
    return gone[0]


def test_config_refuses_unknown_policies_and_non_positive_costs():
    with pytest.raises(ValueError, match="one of lru, cost"):
        EvictionConfig("lfu")
    with pytest.raises(ValueError, match="positive"):
        EvictionConfig("cost", adapter_page_cost_ms=0.0)


def test_lru_evicts_the_least_recently_released_whoever_owns_it():
    pool, cache, adapters = make(4)
    b = cached_block(pool, cache, 1)
    idle_adapter(adapters, 1)
    c = cached_block(pool, cache, 10)
    assert [evict_one(pool, cache, adapters) for _ in range(3)] == [f"b{b}", "a1", f"b{c}"]


def test_cost_gives_up_a_cheap_adapter_page_before_an_older_cached_block():
    pool, cache, adapters = make(4, COST)
    b = cached_block(pool, cache, 1)  # released first: LRU would evict it first
    idle_adapter(adapters, 1)
    assert evict_one(pool, cache, adapters) == "a1"
    assert evict_one(pool, cache, adapters) == f"b{b}"


def test_cost_still_ages_out_a_block_unused_while_others_were_evicted():
    # GreedyDual's floor: each eviction raises it, so a block left idle long enough loses to a fresh adapter
    pool, cache, adapters = make(6, COST)
    old = cached_block(pool, cache, 1)
    newer = cached_block(pool, cache, 10)
    assert evict_one(pool, cache, adapters) == f"b{old}"  # floor -> 20 (the evicted block's priority)
    idle_adapter(adapters, 1)  # stamped 20 + 1: above the block released at floor 0 (0 + 20)
    assert evict_one(pool, cache, adapters) == f"b{newer}"
    assert evict_one(pool, cache, adapters) == "a1"


def test_cost_keeps_a_reused_block_over_a_never_reused_one_released_later():
    for config, first in ((None, "shared"), (COST, "own")):
        pool, cache, adapters = make(4, config)
        bm = BlockManager(pool, BS, cache)
        shared = cached_block(pool, cache, 1)
        (hit,) = [p for p, _ in cache.match([1, 2, 3, 4, 5], (), 1)]
        cache.take([hit])  # a second sequence starts from it
        bm.release([hit])
        own = cached_block(pool, cache, 10)  # a request's own question: never hit, released last
        assert evict_one(pool, cache, adapters) == f"b{shared if first == 'shared' else own}", config


@pytest.mark.parametrize("seed", range(4))
def test_cost_with_equal_costs_and_no_reuse_evicts_in_lru_order(seed):
    def trace(config):
        rng = random.Random(seed)
        pool, cache, adapters = make(12, config)
        evicted = []
        for step in range(60):
            if rng.random() < 0.5:
                aid = rng.randint(1, 5)
                if adapters.is_resident(aid) or pool.num_available() >= 1:
                    idle_adapter(adapters, aid)
            elif pool.num_available() >= 1:
                cached_block(pool, cache, 1000 * step)
            while pool.num_free < 2 and pool.num_available() > pool.num_free:
                evicted.append(evict_one(pool, cache, adapters))
        return evicted

    lru = trace(None)
    assert len(lru) > 10, "the pool was meant to be tight"
    assert trace(EvictionConfig("cost", kv_page_cost_ms=3.0, adapter_page_cost_ms=3.0)) == lru


def test_cost_never_evicts_pinned_adapters_or_held_blocks():
    pool, cache, adapters = make(4, COST)
    adapters.acquire(1, ONE_PAGE)  # pinned
    held = pool.allocate(1, KV)
    _, page = cache.register(held[0], None, [1, 2, 3, 4], ())  # held by its sequence
    idle_adapter(adapters, 2)
    cached_block(pool, cache, 10)
    pool.reclaim(pool.num_pages)  # wants everything
    assert adapters.is_resident(1) and cache.is_cached(page) and cache.refs(page) == 1
    assert not adapters.is_resident(2) and pool.stats().cached == 0
    assert pool.num_free == 2 and pool.num_available() == 2


def test_stamps_are_ordered_by_cost_then_time():
    ev = Eviction(COST)
    kv, adapter = ev.stamp(KV), ev.stamp(ADAPTER)
    assert adapter < kv  # cheaper to restore, though used later
    ev.evicted(adapter)
    assert ev.stamp(ADAPTER) > adapter and ev.stamp(KV) > kv
    lru = Eviction()
    assert lru.stamp(KV) < lru.stamp(ADAPTER) < lru.stamp(KV)


def test_the_flag_reaches_the_engine_config():
    from server.config import EngineConfig
    from server.flags import build_parser, engine_config

    parser, finish = build_parser()
    for argv, want in ((["serve"], "lru"), (["serve", "--eviction", "cost"], "cost")):
        args = parser.parse_args(argv)
        finish(args)
        assert engine_config(args, "cpu").eviction == want
    with pytest.raises(ValueError, match="eviction"):
        EngineConfig(eviction="fifo")
