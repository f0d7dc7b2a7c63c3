"""Adapters served by the engine equal HF transformers + PEFT, greedy fp32, alone and in mixed batches."""

import copy

import pytest
import torch

from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams

ADAPTERS = {  # name -> LoraConfig kwargs: different ranks, targets, scalings
    "qv8": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "all4rs": dict(r=4, lora_alpha=8, use_rslora=True, target_modules="all-linear"),
    "mlp16": dict(r=16, lora_alpha=8, target_modules=["gate_proj", "down_proj", "o_proj"]),
}
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time,", "Hi"]
N = 12


@pytest.fixture(scope="module")
def peft_adapters(tmp_path_factory, hf_fp32):
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    for i, (name, kw) in enumerate(ADAPTERS.items()):
        torch.manual_seed(i)
        model = get_peft_model(copy.deepcopy(hf_fp32), LoraConfig(init_lora_weights=False, **kw))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.mul_(0.5)  # strong enough to change the text
        model.save_pretrained(root / name)
    return root


@pytest.fixture(scope="module")
def peft_model(peft_adapters, hf_fp32):
    from peft import PeftModel

    names = list(ADAPTERS)
    model = PeftModel.from_pretrained(copy.deepcopy(hf_fp32), peft_adapters / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(peft_adapters / name, adapter_name=name)
    return model.eval()


def peft_greedy(model, ids: list[int], adapter: str | None) -> list[int]:
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(
            input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=N, do_sample=False,
            adapter_names=[adapter or "__base__"],
        )
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def engine_with_adapters(make_engine, peft_adapters):
    engine = make_engine()
    for name in ADAPTERS:
        engine.registry.register(name, peft_adapters / name)
    return engine


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
        adapters_in_a_step = max(adapters_in_a_step, len({c.seq.adapter_id for c in engine.last_step.chunks}))
    assert adapters_in_a_step == len(ADAPTERS) + 1  # every adapter and the base in one forward
    for i, (_, adapter, ref) in enumerate(cases):
        assert got[f"m{i}"] == ref, adapter
    stats = engine.adapters.pages.stats
    assert stats.resident == len(ADAPTERS) and stats.loads == len(ADAPTERS)
