"""Adapters served by the engine equal HF transformers + PEFT, greedy fp32, alone and in mixed batches."""

import pytest

from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams
from tests.server.model.peft_cases import ADAPTERS, PROMPTS, N, peft_greedy


@pytest.fixture(scope="module")
def cases(checkpoint, peft_model):
    """(prompt ids, adapter or None, PEFT's greedy tokens) for every prompt x adapter, base included."""
    tok = checkpoint.tokenizer
    out = []
    for p in PROMPTS:
        ids = tok(p)["input_ids"]
        for adapter in [None, *ADAPTERS]:
            out.append((ids, adapter, peft_greedy(peft_model, ids, adapter)))
    return out


def test_adapters_change_the_output(cases):
    by_prompt: dict[tuple, set] = {}
    for ids, _, ref in cases:
        by_prompt.setdefault(tuple(ids), set()).add(tuple(ref))
    assert sum(len(v) > 1 for v in by_prompt.values()) == len(PROMPTS)


def test_one_adapter_at_a_time_matches_peft(engine_with_adapters, cases):
    params = SamplingParams(max_tokens=N, temperature=0, ignore_eos=True)
    for ids, adapter, ref in cases:
        engine_with_adapters.add_request(EngineRequest("one", ids, params, adapter))
        got = []
        while engine_with_adapters.has_work():
            got += [t for d in engine_with_adapters.step() for t in d.token_ids]
        assert got == ref[: len(got)] and len(got) == N, (adapter, got, ref)


def test_mixed_batch_matches_peft(engine_with_adapters, cases):
    engine = engine_with_adapters
    params = SamplingParams(max_tokens=N, temperature=0, ignore_eos=True)
    for i, (ids, adapter, _) in enumerate(cases):
        engine.add_request(EngineRequest(f"m{i}", ids, params, adapter))
    got: dict[str, list[int]] = {}
    adapters_in_a_step = 0
    while engine.has_work():
        for d in engine.step():
            got.setdefault(d.request_id, []).extend(d.token_ids)
        adapters_in_a_step = max(adapters_in_a_step, len({c.seq.lora for c in engine.last_step.chunks}))
    assert adapters_in_a_step == len(ADAPTERS) + 1  # every adapter and the base in one forward
    for i, (_, adapter, ref) in enumerate(cases):
        assert got[f"m{i}"] == ref, adapter
    stats = engine.adapters.pages.stats
    assert stats.resident == len(ADAPTERS) and stats.loads == len(ADAPTERS)
