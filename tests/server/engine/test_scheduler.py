"""The scheduler driven by a fake runner: no model, no torch."""

import random

import pytest

from server.engine.sampling_params import SamplingParams
from server.engine.scheduler import Scheduler, SchedulerConfig
from server.engine.sequence import SeqStatus, Sequence
from server.memory.block_manager import BlockManager
from server.memory.page_pool import PagePool


def make(num_pages=64, block_size=4, max_num_seqs=8, max_batch_tokens=32):
    pool = PagePool(num_pages)
    return Scheduler(SchedulerConfig(max_num_seqs, max_batch_tokens), BlockManager(pool, block_size)), pool


def seq(i, prompt_len, max_tokens):
    return Sequence(i, f"r{i}", 0, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens), float(i))


def run(sched, arrivals: dict[int, list[Sequence]], max_steps=10_000):
    """Fake runner: each sampled chunk appends token 1000 + seq_id; finish at max_tokens."""
    finished: list[Sequence] = []
    trace = []
    step = 0
    while step < max_steps and (sched.has_work() or any(k >= step for k in arrivals)):
        for s in arrivals.pop(step, []):
            sched.add(s)
        out = sched.schedule()
        trace.append(out)
        assert len(out.chunks) <= sched.config.max_num_seqs
        assert out.num_tokens <= sched.config.max_batch_tokens
        assert len({id(c.seq) for c in out.chunks}) == len(out.chunks), "a sequence scheduled twice in one step"
        for c in out.chunks:
            assert len(c.seq.block_table) * sched.blocks.block_size >= c.start + c.num_tokens
        sched.advance(out)
        for c in out.chunks:
            if c.samples:
                c.seq.output_ids.append(1000 + c.seq.seq_id)
                if len(c.seq.output_ids) == c.seq.params.max_tokens:
                    sched.finish(c.seq, "length")
                    finished.append(c.seq)
        step += 1
    return finished, trace


def test_new_requests_join_the_running_batch_at_the_next_step():
    sched, _ = make()
    a, b = seq(0, 5, 10), seq(1, 3, 2)
    finished, trace = run(sched, {0: [a], 3: [b]})
    assert [s.seq_id for s in finished] == [1, 0]
    step3 = trace[3]
    assert {c.seq.seq_id for c in step3.chunks} == {0, 1}  # b prefills while a decodes
    assert [c.seq.seq_id for c in step3.prefills] == [1] and [c.seq.seq_id for c in step3.decodes] == [0]
    assert trace[4].decodes and {c.seq.seq_id for c in trace[4].decodes} == {0, 1}


def test_long_prompts_are_chunked_under_the_token_budget():
    sched, _ = make(max_batch_tokens=8)
    s = seq(0, 30, 2)
    finished, trace = run(sched, {0: [s]})
    assert finished == [s]
    assert [c.num_tokens for out in trace for c in out.chunks][:4] == [8, 8, 8, 6]
    assert not any(c.samples for c in trace[0].chunks)


def test_max_num_seqs_bounds_the_batch():
    sched, _ = make(max_num_seqs=3)
    seqs = [seq(i, 2, 5) for i in range(7)]
    finished, trace = run(sched, {0: seqs})
    assert sorted(s.seq_id for s in finished) == list(range(7))
    assert max(len(out.chunks) for out in trace) == 3


@pytest.mark.parametrize("seed", range(5))
def test_preemption_when_pages_run_out_loses_and_duplicates_nothing(seed):
    rng = random.Random(seed)
    sched, pool = make(num_pages=12, block_size=4, max_num_seqs=8, max_batch_tokens=24)
    seqs = [seq(i, rng.randint(1, 12), rng.randint(1, 20)) for i in range(20)]
    arrivals: dict[int, list[Sequence]] = {}
    for s in seqs:
        arrivals.setdefault(rng.randint(0, 30), []).append(s)
    finished, trace = run(sched, arrivals)
    assert sorted(s.seq_id for s in finished) == list(range(20))
    for s in finished:
        assert s.status is SeqStatus.FINISHED
        assert s.output_ids == [1000 + s.seq_id] * s.params.max_tokens
    assert sum(len(out.preempted) for out in trace) > 0, "the pool was meant to be too small"
    assert pool.num_free == pool.num_pages


def test_preempted_sequence_is_recomputed_from_scratch_and_the_newest_goes_first():
    sched, pool = make(num_pages=4, block_size=4, max_num_seqs=4, max_batch_tokens=64)
    old, new = seq(0, 8, 6), seq(1, 8, 6)
    sched.add(old)
    sched.add(new)
    out = sched.schedule()
    assert len(out.prefills) == 2 and pool.num_free == 0
    sched.advance(out)
    for c in out.chunks:
        c.seq.output_ids.append(5)
    out = sched.schedule()  # both need a third page at position 8: the newest yields
    assert out.preempted == [new] and [c.seq for c in out.chunks] == [old]
    assert new.num_computed == 0 and new.block_table == [] and sched.waiting[0] is new


def test_abort_frees_pages_at_once():
    sched, pool = make()
    s = seq(0, 9, 4)
    sched.add(s)
    sched.advance(sched.schedule())
    assert pool.num_free < pool.num_pages
    sched.finish(s, "abort")
    assert pool.num_free == pool.num_pages and not sched.has_work()


class PoolAdapters:
    """AdapterAdmission over the real page bookkeeping; adapter 13 can never load."""

    def __init__(self, pool, page_elems=64):
        from server.memory.adapter_pages import AdapterPages

        self.pages = AdapterPages(pool, page_elems)
        self.in_use: dict[int, int] = {}

    def acquire(self, adapter_id, lazy=()):
        if adapter_id == 13:
            raise ValueError("adapter 13: adapter_model.safetensors is missing")
        sizes = {(layer, "q_proj", ab): 32 for layer in range(adapter_id % 3 + 1) for ab in "ab"}  # 1-3 pages
        if self.pages.acquire(adapter_id, sizes) is None:
            return False
        self.in_use[adapter_id] = self.in_use.get(adapter_id, 0) + 1
        return True

    def release(self, adapter_id):
        self.in_use[adapter_id] -= 1
        self.pages.release(adapter_id)


@pytest.mark.parametrize("seed", range(4))
def test_adapters_and_kv_share_the_pool_without_loss_or_deadlock(seed):
    rng = random.Random(seed)
    pool = PagePool(16)
    adapters = PoolAdapters(pool)
    sched = Scheduler(SchedulerConfig(6, 24), BlockManager(pool, 4), adapters)
    evicted_in_use = []
    real_evict = adapters.pages.evict_oldest

    def watching_evict():
        resident_before = {a for a in range(40) if adapters.pages.is_resident(a)}
        freed = real_evict()
        gone = {a for a in resident_before if not adapters.pages.is_resident(a)}
        evicted_in_use.extend(a for a in gone if adapters.in_use.get(a))
        return freed

    adapters.pages.evict_oldest = watching_evict
    seqs = []
    for i in range(40):
        s = seq(i, rng.randint(1, 10), rng.randint(1, 12))
        first = rng.choice([-1, 13, *range(20)])
        s.lora = () if first < 0 else ((first, 1.0),)
        if i % 4 == 0 and first >= 0:  # a mixture: all of its adapters pinned together, or none
            s.lora += ((rng.choice([13, *range(20, 30)]), 0.5),)
        seqs.append(s)
    arrivals: dict[int, list[Sequence]] = {}
    for s in seqs:
        arrivals.setdefault(rng.randint(0, 20), []).append(s)
    failed: list[Sequence] = []
    finished: list[Sequence] = []
    step = 0
    while sched.has_work() or arrivals:
        for s in arrivals.pop(step, []):
            sched.add(s)
        out = sched.schedule()
        failed += [s for s, _ in out.failed]
        sched.advance(out)
        for c in out.chunks:
            if c.samples:
                c.seq.output_ids.append(7)
                if len(c.seq.output_ids) == c.seq.params.max_tokens:
                    sched.finish(c.seq, "length")
                    finished.append(c.seq)
        step += 1
        assert step < 5000, "no progress"
    assert sorted(s.seq_id for s in finished + failed) == list(range(40))
    assert all(13 in s.adapter_ids for s in failed) and all(s.finish_reason == "error" for s in failed)
    assert evicted_in_use == []
    assert adapters.pages.stats.evictions > 0
    assert all(v == 0 for v in adapters.in_use.values())
    assert pool.stats().kv == 0
