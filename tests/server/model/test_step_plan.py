"""The step plan (all layers of a step in one C call) against the model's own forward: every
step it serves is run both ways and compared, on a mixed batch of base rows and adapters of three shapes
(q/v only, all-linear with rsLoRA, MLP + o), and with rows routed per token by Arrow (PEFT's rule and
mixed=base levels), mixtures and DoRA rows beside them; then greedy tokens equal with the plan off. (The
fp32, GGUF, LoRA, DoRA, mixture and per-token Arrow parity tests against HF and PEFT run through the plan
too: it serves their steps.)"""

import copy

import pytest
import torch

from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams
from server.engine.sequence import TokenRouting
from server.model.step_plan import StepPlan
from tests.server.model.peft_cases import ADAPTERS, PROMPTS

CANDIDATES = tuple((a, 1.0) for a in ADAPTERS)  # mixed ranks and target sets: each competes where it targets
DORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])


@pytest.fixture(scope="module")
def engine(make_engine, peft_adapters, tmp_path_factory, hf_fp32):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(7)
    model = get_peft_model(copy.deepcopy(hf_fp32), LoraConfig(use_dora=True, init_lora_weights=False, **DORA))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(0.5)  # as tests/server/model/test_dora_parity.py: strong enough to change the text
            if "lora_magnitude_vector" in n:
                p.mul_(1 + 0.3 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("plan_dora")
    model.save_pretrained(root / "dora8")
    engine = make_engine()
    for name in ADAPTERS:
        engine.registry.register(name, peft_adapters / name)
    engine.registry.register("dora8", root / "dora8")
    return engine


def _special(tok, params, kind: str) -> list[EngineRequest]:
    """Base and plain rows beside per-token Arrow rows, mixtures or DoRA rows."""
    out = []
    for i, p in enumerate(PROMPTS):
        ids = tok(p)["input_ids"]
        out += [EngineRequest(f"base{i}", ids, params), EngineRequest(f"qv8-{i}", ids, params, "qv8")]
        if kind == "arrow":
            levels = None if i % 2 else (0.9, 1.3, 1.1)  # PEFT's rule, and mixed=base where targets differ
            out.append(EngineRequest(f"arrow{i}", ids, params, mixture=CANDIDATES,
                                     routing=TokenRouting(2, 0.5, levels)))
        elif kind == "mixture":
            out.append(EngineRequest(f"mix{i}", ids, params, mixture=(("all4rs", 0.7), ("mlp16", 0.5))))
        else:
            out.append(EngineRequest(f"dora{i}", ids, params, "dora8"))
    return out


_FEATURE = {  # which steps count as carrying the kind's rows
    "arrow": lambda lora: lora.arrow is not None and lora.arrow.rows.numel() > 0,
    "mixture": lambda lora: lora.info.entry_rows is not None,
    "dora": lambda lora: lora.scale_offsets is not None,
}

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


@pytest.mark.parametrize("kind", list(_FEATURE))
def test_plan_serves_arrow_mixture_and_dora_rows_as_the_forward(engine, checkpoint, kind):
    runner = engine.runner
    plan = StepPlan.build(runner.model)
    if plan is None:
        pytest.skip("no C compiler: the model's forward serves every step")
    steps = {"served": 0, "featured": 0, "refused": 0}

    def both(input_ids, positions, step, kv_cache):
        want = runner.model.hidden_states(input_ids, positions, step, kv_cache)  # (T, D)
        featured = step.lora is not None and _FEATURE[kind](step.lora)
        if not plan.serves(step):
            steps["refused"] += featured
            return want
        got = plan.hidden_states(input_ids, positions, step, kv_cache)  # (T, D)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        steps["served"] += 1
        steps["featured"] += featured
        return got

    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    runner.hidden_states = both
    try:
        got = _generate(engine, _special(checkpoint.tokenizer, params, kind))
    finally:
        runner.hidden_states = plan.hidden_states
    assert steps["refused"] == 0 and steps["featured"] >= 6  # served: the prefill step and every decode
    assert all(len(v) == 6 for v in got.values())


@pytest.mark.parametrize("kind", ["lora", *_FEATURE])
def test_greedy_tokens_equal_with_the_plan_off(engine, checkpoint, kind):
    runner = engine.runner
    if StepPlan.build(runner.model) is None:
        pytest.skip("no C compiler: the model's forward serves every step")
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    tok = checkpoint.tokenizer
    requests = (lambda: _requests(tok, params)) if kind == "lora" else (lambda: _special(tok, params, kind))
    on = _generate(engine, requests())
    saved, runner.hidden_states = runner.hidden_states, runner.model.hidden_states
    try:
        off = _generate(engine, requests())
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
