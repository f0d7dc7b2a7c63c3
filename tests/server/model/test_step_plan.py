"""The step plan (all layers of a step in one C call) against the model's own forward: every
step it serves is run both ways and compared, on a mixed batch of base rows and adapters of three shapes
(q/v only, all-linear with rsLoRA, MLP + o), then greedy tokens equal with the plan off. (The fp32, GGUF and
LoRA parity tests against HF and PEFT run through the plan too: it serves their steps.)"""

import pytest
import torch

from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams
from server.model.step_plan import StepPlan
from tests.server.model.peft_cases import ADAPTERS, PROMPTS

def _requests(tok, params):
    adapters = [None, *ADAPTERS]
    return [EngineRequest(f"r{i}", tok(p)["input_ids"], params, adapters[i % len(adapters)])
            for i, p in enumerate(PROMPTS * 2)]


def _generate(engine, requests) -> dict[str, list[int]]:
    for r in requests:
        engine.add_request(r)
    got: dict[str, list[int]] = {}
    while engine.has_work():
        for d in engine.step():
            got.setdefault(d.request_id, []).extend(d.token_ids)
    return got


def test_plan_equals_the_model_forward_step_by_step(engine_with_adapters, checkpoint):
    runner = engine_with_adapters.runner
    plan = StepPlan.build(runner.model)
    if plan is None:
        pytest.skip("no C compiler: the model's forward serves every step")
    compared = {"served": 0, "lora": 0}

    def both(input_ids, positions, step, kv_cache):
        want = runner.model.hidden_states(input_ids, positions, step, kv_cache)  # (T, D), writes this step's KV
        if not plan.serves(step):
            return want
        got = plan.hidden_states(input_ids, positions, step, kv_cache)  # the same KV again, then the layers
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        compared["served"] += 1
        compared["lora"] += step.lora is not None
        return got

    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    runner.hidden_states = both
    try:
        _generate(engine_with_adapters, _requests(checkpoint.tokenizer, params))
    finally:
        runner.hidden_states = plan.hidden_states
    assert compared["served"] >= 8 and compared["lora"] >= 8  # every step (prefill, then decodes), adapter rows in each


def test_greedy_tokens_equal_with_the_plan_off(engine_with_adapters, checkpoint):
    runner = engine_with_adapters.runner
    if StepPlan.build(runner.model) is None:
        pytest.skip("no C compiler: the model's forward serves every step")
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    on = _generate(engine_with_adapters, _requests(checkpoint.tokenizer, params))
    saved, runner.hidden_states = runner.hidden_states, runner.model.hidden_states
    try:
        off = _generate(engine_with_adapters, _requests(checkpoint.tokenizer, params))
    finally:
        runner.hidden_states = saved
    assert on == off and all(len(v) == 12 for v in on.values())


def test_steps_it_cannot_drive_go_through_the_model(engine_with_adapters):
    from server.model.batch import AttentionBatch, ForwardStep

    plan = StepPlan.build(engine_with_adapters.runner.model)
    if plan is None:
        pytest.skip("no C compiler")
    empty = torch.zeros(1, dtype=torch.int64)
    decode = AttentionBatch(empty, 0, None, None, None, None, None, empty)
    prefill = AttentionBatch(empty, 1, None, None, None, None, None, empty)
    assert plan.serves(ForwardStep(decode)) and plan.serves(ForwardStep(prefill))
    assert not plan.serves(ForwardStep(prefill, capture={(0, "q_proj"): None}))  # a routing pass keeps inputs
