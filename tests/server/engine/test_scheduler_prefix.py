"""The scheduler with a prefix cache, driven by a fake runner: no model, no torch."""

import random
from dataclasses import dataclass

import pytest

from server.engine.sampling_params import SamplingParams
from server.engine.scheduler import Scheduler, SchedulerConfig
from server.engine.sequence import SeqStatus, Sequence
from server.memory.adapter_pages import AdapterPages
from server.memory.block_manager import BlockManager
from server.memory.eviction import Eviction, EvictionConfig
from server.memory.page_pool import PagePool
from server.memory.prefix_cache import PrefixCache

BS = 4


def make(num_pages=64, max_num_seqs=8, max_batch_tokens=64, adapters=None):
    pool = PagePool(num_pages)
    cache = PrefixCache(pool, BS)
    sched = Scheduler(SchedulerConfig(max_num_seqs, max_batch_tokens), BlockManager(pool, BS, cache), adapters)
    return sched, pool, cache


def seq(i, prompt, max_tokens=3, identity=(), params=None):
    p = params or SamplingParams(max_tokens=max_tokens)
    return Sequence(i, f"r{i}", 0, list(prompt), p, float(i), lora_identity=identity)


@dataclass
class WithPromptLogprobs:  # what the scheduler reads of a request that wants prompt logprobs
    max_tokens: int
    prompt_logprobs: int | None = 0


def check_pages(sched, pool, cache):
    """free + held + idle-cached + adapter == total; a page is in two tables only when cached and held by both."""
    s = pool.stats()
    assert s.free + s.kv + s.adapter + s.cached == s.total
    holders: dict[int, int] = {}
    for q in sched.running:
        for p in q.block_table:
            holders[p] = holders.get(p, 0) + 1
    for q in sched.waiting:
        assert q.block_table == []
    for p, n in holders.items():
        if cache.is_cached(p):
            assert cache.refs(p) == n
        else:
            assert n == 1, f"private page {p} in {n} tables"
    assert s.kv == len(holders)


def step(sched, pool, cache, finished):
    out = sched.schedule()
    for c in out.chunks:  # every computed position is backed by the table
        assert len(c.seq.block_table) * BS >= c.start + c.num_tokens
    sched.advance(out)
    for c in out.chunks:
        if c.samples:
            c.seq.output_ids.append(1000 + c.seq.seq_id)
            if len(c.seq.output_ids) == c.seq.params.max_tokens:
                sched.finish(c.seq, "length")
                finished.append(c.seq)
    check_pages(sched, pool, cache)
    return out


def run(sched, pool, cache, arrivals, max_steps=5000):
    finished, trace, t = [], [], 0
    while sched.has_work() or arrivals:
        for s in arrivals.pop(t, []):
            sched.add(s)
        trace.append(step(sched, pool, cache, finished))
        t += 1
        assert t < max_steps, "no progress"
    return finished, trace


PROMPT = list(range(1, 19))  # 4 full blocks + 2 tokens


def test_a_later_sequence_starts_after_the_cached_prefix():
    sched, pool, cache = make()
    a = seq(0, PROMPT)
    run(sched, pool, cache, {0: [a]})
    assert a.num_cached_tokens == 0 and pool.stats().cached >= 4
    b = seq(1, PROMPT + [77])
    sched.add(b)
    free_before = pool.num_free
    out = step(sched, pool, cache, [])
    (chunk,) = out.prefills
    assert chunk.start == 16 and chunk.num_tokens == 3  # only the uncomputed tail
    assert b.num_cached_tokens == 16
    assert pool.num_free == free_before - 1  # one new page: the cached four are shared
    assert cache.stats.queried_tokens == 18 + 19 and cache.stats.hit_tokens == 16


def test_at_least_one_prompt_token_is_computed():
    sched, pool, cache = make()
    prompt = list(range(1, 17))  # exactly 4 blocks
    run(sched, pool, cache, {0: [seq(0, prompt)]})
    b = seq(1, prompt)
    sched.add(b)
    out = step(sched, pool, cache, [])
    (chunk,) = out.chunks
    assert (chunk.start, chunk.num_tokens) == (12, 4) and b.output_ids  # the last prompt token was sampled
    assert b.num_cached_tokens == 12


def test_identity_and_prompt_logprobs_block_reuse():
    sched, pool, cache = make(max_batch_tokens=128)
    run(sched, pool, cache, {0: [seq(0, PROMPT, identity=(("x", 1.0),))]})
    others = [seq(1, PROMPT), seq(2, PROMPT, identity=(("x", 0.5),)), seq(3, PROMPT, identity=(("y", 1.0),)),
              seq(4, PROMPT, identity=(("x", 1.0),), params=WithPromptLogprobs(3))]
    for s in others:
        sched.add(s)
    out = step(sched, pool, cache, [])
    assert all(c.start == 0 and c.num_tokens == 18 for c in out.prefills)
    assert [s.num_cached_tokens for s in others] == [0, 0, 0, None]  # None: not looked up at all


def test_running_sequences_share_blocks_registered_as_soon_as_computed():
    sched, pool, cache = make(max_batch_tokens=8)  # chunked: a's prompt takes three steps
    a, b = seq(0, PROMPT, max_tokens=4), seq(1, PROMPT, max_tokens=8)
    sched.add(a)
    finished = []
    for _ in range(3):
        step(sched, pool, cache, finished)
    assert a.num_computed == 18 and len(a.block_hashes) == 4
    sched.add(b)
    step(sched, pool, cache, finished)
    assert b.num_cached_tokens == 16 and b.block_table[:4] == a.block_table[:4]
    shared = list(a.block_table[:4])
    assert all(cache.refs(p) == 2 for p in shared)
    while a.status is not SeqStatus.FINISHED:
        step(sched, pool, cache, finished)
    assert b.status is SeqStatus.RUNNING and all(cache.refs(p) == 1 for p in shared)  # not freed: b holds them
    pool.reclaim(pool.num_pages)
    assert all(cache.is_cached(p) and p not in pool._free for p in shared)
    while sched.has_work():
        step(sched, pool, cache, finished)
    assert all(cache.refs(p) == 0 for p in shared) and pool.stats().kv == 0


def test_preempting_a_sharer_never_frees_the_shared_pages():
    sched, pool, cache = make(num_pages=8, max_batch_tokens=64)
    a = seq(0, PROMPT, max_tokens=12)  # 18 + 12 tokens: grows to 8 pages
    sched.add(a)
    step(sched, pool, cache, [])
    b = seq(1, PROMPT, max_tokens=12)
    sched.add(b)
    step(sched, pool, cache, [])
    assert b.block_table[:4] == a.block_table[:4]
    shared = a.block_table[:4]
    preempted = []
    while not preempted:
        preempted = step(sched, pool, cache, []).preempted
    assert preempted == [b] and b.block_table == [] and b.num_computed == 0 and b.block_hashes == []
    assert all(cache.refs(p) == 1 for p in shared)  # a still holds them
    finished, _ = run(sched, pool, cache, {})
    assert sorted(s.seq_id for s in finished) == [0, 1]
    assert b.num_preemptions >= 1 and b.output_ids == [1001] * 12 and b.num_cached_tokens == 16
    assert pool.stats().kv == 0


def test_abort_of_a_sharer_keeps_the_other_running():
    sched, pool, cache = make()
    a, b = seq(0, PROMPT, max_tokens=5), seq(1, PROMPT, max_tokens=5)
    sched.add(a)
    step(sched, pool, cache, [])
    sched.add(b)
    step(sched, pool, cache, [])
    shared = a.block_table[:4]
    sched.finish(a, "abort")
    check_pages(sched, pool, cache)
    assert all(cache.refs(p) == 1 for p in shared)
    sched.finish(b, "abort")
    check_pages(sched, pool, cache)
    assert pool.stats().kv == 0 and pool.stats().cached == 4  # b's partial and decode pages went back free


@pytest.mark.parametrize("policy", ["lru", "cost"])
@pytest.mark.parametrize("seed", range(6))
def test_random_shared_prefixes_under_a_tight_pool_lose_nothing(seed, policy):
    rng = random.Random(seed)
    pool = PagePool(24, Eviction(EvictionConfig(policy)))
    adapters = PoolAdapters(pool)
    sched = Scheduler(SchedulerConfig(6, 24), BlockManager(pool, BS, cache := PrefixCache(pool, BS)), adapters)
    systems = [list(range(100 * k, 100 * k + rng.randint(4, 14))) for k in range(3)]
    seqs = []
    for i in range(40):
        aid = rng.choice([-1, 1, 2, 3])
        prompt = rng.choice(systems) + [rng.randint(1, 50) for _ in range(rng.randint(0, 6))]
        s = seq(i, prompt, rng.randint(1, 10), identity=() if aid < 0 else ((f"d{aid}", 1.0),))
        s.lora = () if aid < 0 else ((aid, 1.0),)
        seqs.append(s)
    arrivals: dict[int, list[Sequence]] = {}
    for s in seqs:
        arrivals.setdefault(rng.randint(0, 25), []).append(s)
    finished, trace = run(sched, pool, cache, arrivals)
    assert sorted(s.seq_id for s in finished) == list(range(40))
    assert all(s.output_ids == [1000 + s.seq_id] * s.params.max_tokens for s in finished)
    assert cache.stats.hit_tokens > 0, "the prompts were meant to share prefixes"
    assert sum(len(o.preempted) for o in trace) > 0 or cache.stats.evictions > 0, "the pool was meant to be tight"
    assert pool.stats().kv == 0 and all(v == 0 for v in adapters.pins.values())


class PoolAdapters:
    """AdapterAdmission over the real page bookkeeping: adapters compete with cached blocks for pages."""

    def __init__(self, pool):
        self.pages = AdapterPages(pool, page_elems=64)
        self.pins: dict[int, int] = {}

    def acquire(self, adapter_id, lazy=()):
        if self.pages.acquire(adapter_id, {(0, "q_proj", "a"): 64, (0, "q_proj", "b"): 64}) is None:
            return False
        self.pins[adapter_id] = self.pins.get(adapter_id, 0) + 1
        return True

    def release(self, adapter_id):
        self.pins[adapter_id] -= 1
        self.pages.release(adapter_id)


def test_requests_with_one_prefix_arriving_together_prefill_it_once():
    sched, pool, cache = make(max_batch_tokens=128)
    other = seq(0, [90 + i for i in range(18)])
    a, b = seq(1, PROMPT + [70]), seq(2, PROMPT + [71])
    for s in (other, a, b):
        sched.add(s)
    out = step(sched, pool, cache, [])
    assert [c.seq for c in out.prefills] == [other, a] and list(sched.waiting) == [b]  # b waits for a's blocks
    out = step(sched, pool, cache, [])
    (chunk,) = out.prefills
    assert chunk.seq is b and chunk.start == 16 and b.num_cached_tokens == 16
    assert b.block_table[:4] == a.block_table[:4]
