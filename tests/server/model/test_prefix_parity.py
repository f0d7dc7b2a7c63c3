"""Prefix caching changes no output: fp32 greedy, caching on == caching off, token for token.

Mixed batches of base rows, adapter rows and mixtures, sharing a long prefix and not, arriving
while earlier ones run (so blocks are shared by running sequences and reused after they end), in a
roomy pool and in one too small to keep everything cached (preemption, eviction of cached blocks
and of idle adapters).
"""

import pytest

from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams
from tests.server.model.peft_cases import ADAPTERS

GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
SYSTEM = ("You are a careful assistant. Answer briefly and precisely, cite no sources, and never "
          "repeat the question. If you do not know, say so. The user writes in English. ")
QUESTIONS = ["What is the capital of France?", "Name a prime number.", "Why is the sky blue?",
             "Write one word about cats.", "What is 2 plus 2?", "Name a colour."]
OTHERS = ["Once upon a time,", "def fibonacci(n):", "Hi"]
IDENTITIES = [  # (adapter, mixture)
    (None, ()), ("qv8", ()), ("all4rs", ()), (None, (("qv8", 0.7), ("all4rs", 0.5))),
]


def engine_for(make_engine, peft_adapters, **overrides):
    engine = make_engine(**overrides)
    for name in ADAPTERS:
        engine.registry.register(name, peft_adapters / name)
    return engine


def workload(tok) -> dict[int, list[EngineRequest]]:
    """Arrivals by step: three waves; every identity sees the shared prefix, and some unrelated prompts."""
    arrivals: dict[int, list[EngineRequest]] = {}
    k = 0
    for wave, step in enumerate((0, 3, 40)):
        for j, q in enumerate(QUESTIONS[wave * 2 : wave * 2 + 2] + QUESTIONS[:1]):
            adapter, mixture = IDENTITIES[(j + wave) % len(IDENTITIES)]
            ids = tok(SYSTEM + q)["input_ids"]
            arrivals.setdefault(step, []).append(EngineRequest(f"r{k}", ids, GREEDY, adapter, mixture))
            k += 1
        other = tok(OTHERS[wave])["input_ids"]
        adapter, mixture = IDENTITIES[(wave + 1) % len(IDENTITIES)]
        arrivals[step].append(EngineRequest(f"r{k}", other, GREEDY, adapter, mixture))
        k += 1
    return arrivals


def run(engine, arrivals: dict[int, list[EngineRequest]]) -> dict[str, list[int]]:
    arrivals = {s: list(rs) for s, rs in arrivals.items()}
    got: dict[str, list[int]] = {}
    step = 0
    while arrivals or engine.has_work():
        for r in arrivals.pop(step, []):
            engine.add_request(r)
        for d in engine.step():
            got.setdefault(d.request_id, []).extend(d.token_ids)
        step += 1
        assert step < 2000
        s = engine.pool.book.stats()
        assert s.free + s.kv + s.adapter + s.cached == s.total
    return got


@pytest.fixture(scope="module")
def arrivals(checkpoint):
    return workload(checkpoint.tokenizer)


def test_caching_on_equals_off_in_a_roomy_pool(make_engine, peft_adapters, arrivals):
    off = engine_for(make_engine, peft_adapters, prefix_caching=False)
    on = engine_for(make_engine, peft_adapters)
    want, got = run(off, arrivals), run(on, arrivals)
    assert got == want
    stats = on.prefix_cache.stats
    assert stats.hit_tokens >= 2 * 16 * len(IDENTITIES), "each identity should reuse the shared prefix"
    assert on.pool.book.stats().kv == 0 and on.pool.book.stats().cached > 0
    book = off.pool.book
    assert off.prefix_cache is None and book.num_free == book.num_pages - book.stats().adapter


def test_caching_on_equals_off_under_preemption_and_eviction(make_engine, peft_adapters, arrivals):
    tight = dict(pool_mb=12, max_batch_tokens=64)  # ~16 pages: two adapters' pages + a few prompts' KV
    off = engine_for(make_engine, peft_adapters, prefix_caching=False, **tight)
    on = engine_for(make_engine, peft_adapters, **tight)
    want, got = run(off, arrivals), run(on, arrivals)
    assert got == want
    assert on.scheduler.num_preemptions > 0, "the pool was meant to be too small for the batch"
    assert on.prefix_cache.stats.evictions > 0, "the pool was meant to be too small to keep every block"
    assert on.prefix_cache.stats.hit_tokens > 0
    assert on.pool.book.stats().kv == 0
