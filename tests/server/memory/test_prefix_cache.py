"""The prefix cache's bookkeeping without a model: hash chain, reuse, eviction order, page accounting."""

from server.memory.adapter_pages import AdapterPages
from server.memory.block_manager import BlockManager
from server.memory.page_pool import KV, PagePool
from server.memory.prefix_cache import PrefixCache, block_hash

BS = 4
X = (("digest-x", 1.0),)
Y = (("digest-y", 1.0),)
MIX = (("digest-x", 0.5), ("digest-y", 0.5))


def cache_with(num_pages=16):
    pool = PagePool(num_pages)
    return pool, PrefixCache(pool, BS)


def fill(pool, cache, tokens, identity):
    """A sequence computed tokens: its full blocks registered, as the scheduler does; its table."""
    table = pool.allocate(-(-len(tokens) // BS), KV)
    parent = None
    for i in range(len(tokens) // BS):
        parent, table[i] = cache.register(table[i], parent, tokens[i * BS : (i + 1) * BS], identity)
    return table


def accounted(pool):
    s = pool.stats()
    return s.free + s.kv + s.adapter + s.cached == s.total


def test_hash_chain_depends_on_tokens_parent_and_identity():
    t = [1, 2, 3, 4]
    assert block_hash(None, t, X) == block_hash(None, list(t), X)
    assert block_hash(None, t, X) != block_hash(None, t, Y)
    assert block_hash(None, t, ()) != block_hash(None, t, X)  # the base has its own identity
    assert block_hash(None, t, X) != block_hash(None, t, MIX)
    assert block_hash(None, t, X) != block_hash(7, t, X)
    assert block_hash(None, t, X) != block_hash(None, [1, 2, 3, 5], X)


def test_match_returns_the_longest_chain_of_full_blocks_under_one_identity():
    pool, cache = cache_with()
    tokens = list(range(1, 15))  # 3 full blocks and a partial one
    table = fill(pool, cache, tokens, X)
    chain = cache.match(tokens, X, max_blocks=10)
    assert [p for p, _ in chain] == table[:3]  # the partial block is never cached
    assert cache.match(tokens, X, max_blocks=2) == chain[:2]
    assert cache.match(tokens, Y, max_blocks=10) == []  # other adapter: no reuse
    assert cache.match(tokens, MIX, max_blocks=10) == []
    assert cache.match(tokens, (), max_blocks=10) == []
    diverged = tokens[:5] + [99] + tokens[6:]  # differs in the second block
    assert [p for p, _ in cache.match(diverged, X, 10)] == table[:1]
    assert accounted(pool)


def test_blocks_stay_cached_idle_after_release_and_come_back_on_reuse():
    pool, cache = cache_with()
    bm = BlockManager(pool, BS, cache)
    tokens = list(range(1, 13))
    table = fill(pool, cache, tokens, X)
    pages = list(table)
    bm.release(table)
    s = pool.stats()
    assert (s.kv, s.cached, s.free) == (0, 3, 13) and accounted(pool)
    chain = cache.match(tokens, X, 3)
    assert [p for p, _ in chain] == pages
    assert cache.num_idle(pages) == 3
    cache.take(pages)
    s = pool.stats()
    assert (s.kv, s.cached) == (3, 0) and accounted(pool)


def test_a_shared_block_is_freed_only_when_both_holders_end():
    pool, cache = cache_with(num_pages=4)
    bm = BlockManager(pool, BS, cache)
    tokens = [5, 6, 7, 8, 9]
    a = fill(pool, cache, tokens, X)  # block 0 cached, block 1 private
    b = [p for p, _ in cache.match(tokens, X, 1)]
    cache.take(b)
    bm.grow(b, 5)
    shared = a[0]
    assert b[0] == shared and cache.refs(shared) == 2 and accounted(pool)
    bm.release(a)
    assert cache.refs(shared) == 1 and pool.stats().cached == 0
    pool.reclaim(pool.num_pages)  # wants every page: the held block must survive
    assert cache.is_cached(shared) and shared not in pool._free
    bm.release(b)
    assert cache.refs(shared) == 0 and pool.stats().cached == 1 and accounted(pool)
    pool.reclaim(pool.num_pages)
    assert not cache.is_cached(shared) and pool.num_free == pool.num_pages


def test_eviction_is_one_lru_across_kv_blocks_and_adapters_leaves_first():
    pool, cache = cache_with(num_pages=12)
    bm = BlockManager(pool, BS, cache)
    adapters = AdapterPages(pool, page_elems=64)
    sizes = {(0, "q_proj", "a"): 64}  # one page
    chain_a = fill(pool, cache, list(range(1, 13)), X)  # 3 blocks: a0 <- a1 <- a2
    a0, a1, a2 = chain_a
    adapters.acquire(1, sizes)
    chain_b = fill(pool, cache, list(range(50, 58)), ())  # 2 blocks: b0 <- b1
    b0, b1 = chain_b
    adapters.acquire(2, sizes)  # stays pinned: never evicted
    bm.release(chain_a)  # idle, leaf first: a2, a1, a0
    adapters.release(1)
    bm.release(chain_b)  # b1, b0
    order = []
    while (t := [(r.oldest(), r) for r in pool.reclaimers if r.oldest() is not None]):
        _, r = min(t, key=lambda x: x[0])
        before_blocks = {p for p in (a0, a1, a2, b0, b1) if cache.is_cached(p)}
        before_adapter = adapters.is_resident(1)
        pool.reclaim(pool.num_free + 1)
        gone = before_blocks - {p for p in before_blocks if cache.is_cached(p)}
        order += list(gone) or (["adapter 1"] if before_adapter and not adapters.is_resident(1) else [])
        assert accounted(pool)
    assert order == [a2, a1, a0, "adapter 1", b1, b0]
    assert adapters.is_resident(2) and pool.stats().adapter == 1


def test_a_parent_with_cached_children_waits_for_them():
    pool, cache = cache_with(num_pages=8)
    bm = BlockManager(pool, BS, cache)
    parent, child = fill(pool, cache, list(range(1, 9)), X)
    bm.release([child, parent])  # the wrong order on purpose: the parent idles first (older tick)
    assert list(cache._idle) == [parent, child]
    assert cache.oldest() == cache._idle[child]  # the parent is skipped while its child is cached
    cache.evict_oldest()
    assert cache.is_cached(parent) and not cache.is_cached(child)
    cache.evict_oldest()
    assert not cache.is_cached(parent) and pool.num_free == pool.num_pages and accounted(pool)


def test_equal_blocks_computed_side_by_side_keep_one_cached_copy():
    pool, cache = cache_with()
    bm = BlockManager(pool, BS, cache)
    t = [1, 2, 3, 4, 5]
    a, b = fill(pool, cache, t, X), fill(pool, cache, t, X)
    assert a[0] == b[0] and cache.refs(a[0]) == 2  # b's copy went back free, b holds a's block
    assert pool.stats().kv == 3 and pool.num_free == 13 and accounted(pool)
    bm.release(b)
    assert pool.stats().cached == 0 and pool.stats().kv == 2
    bm.release(a)
    assert pool.stats().cached == 1 and accounted(pool)
