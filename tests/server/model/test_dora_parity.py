"""DoRA adapters (PEFT use_dora=True) served by the engine equal HF transformers + PEFT, greedy fp32:
alone, and in one batch with LoRA adapters and base rows."""

import copy

import pytest
import torch

from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams
from tests.server.model.peft_cases import ADAPTERS, PROMPTS, N, peft_greedy

DORA = {  # name -> LoraConfig kwargs: different ranks, targets, scalings
    "dora_qv8": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "dora_all4rs": dict(r=4, lora_alpha=8, use_rslora=True, target_modules="all-linear"),
    "dora_mlp16": dict(r=16, lora_alpha=8, target_modules=["gate_proj", "down_proj", "o_proj"],
                       layers_to_transform=[0, 3, 5, 11]),
}
LORA = "qv8"  # from tests/server/model/peft_cases.py, served in the same batch


@pytest.fixture(scope="module")
def dora_adapters(tmp_path_factory, hf_fp32):
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("dora")
    for i, (name, kw) in enumerate(DORA.items()):
        torch.manual_seed(100 + i)
        model = get_peft_model(copy.deepcopy(hf_fp32), LoraConfig(use_dora=True, init_lora_weights=False, **kw))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.mul_(0.5)  # strong enough to change the text
                if "lora_magnitude_vector" in n:  # and the magnitudes no longer the initial norms
                    p.mul_(1 + 0.3 * torch.randn_like(p))
        model.save_pretrained(root / name)
    return root


@pytest.fixture(scope="module")
def dora_peft(dora_adapters, hf_fp32):
    from peft import PeftModel
    from peft.tuners.lora import dora

    names = list(DORA)
    model = PeftModel.from_pretrained(copy.deepcopy(hf_fp32), dora_adapters / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(dora_adapters / name, adapter_name=name)
    # PEFT recomputes ||W + s B A|| every forward unless told to cache it (same values, computed once)
    caching, dora.ENABLE_DORA_CACHING = dora.ENABLE_DORA_CACHING, True
    yield model.eval()
    dora.ENABLE_DORA_CACHING = caching


def dora_greedy(model, ids: list[int], adapter: str) -> list[int]:
    """PEFT cannot batch DoRA per row (adapter_names), so the adapter is set for the whole model."""
    model.set_adapter(adapter)
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=N, do_sample=False)
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def cases(checkpoint, dora_peft, peft_model):
    """(prompt ids, adapter or None, PEFT's greedy tokens): every prompt x DoRA adapter, one LoRA, the base."""
    out = []
    for p in PROMPTS[:3]:
        ids = checkpoint.tokenizer(p)["input_ids"]
        out += [(ids, name, dora_greedy(dora_peft, ids, name)) for name in DORA]
        out += [(ids, a, peft_greedy(peft_model, ids, a)) for a in (LORA, None)]
    return out


@pytest.fixture(scope="module")
def engine(make_engine, dora_adapters, peft_adapters):
    engine = make_engine()
    for name in DORA:
        assert engine.registry.register(name, dora_adapters / name).format == "dora"
    assert ADAPTERS[LORA] and engine.registry.register(LORA, peft_adapters / LORA).format == "lora"
    return engine


def test_each_dora_adapter_changes_the_output(cases):
    base = {tuple(ids): ref for ids, a, ref in cases if a is None}
    for name in DORA:
        assert any(ref != base[tuple(ids)] for ids, a, ref in cases if a == name), name


def test_one_dora_adapter_at_a_time_matches_peft(engine, cases):
    params = SamplingParams(max_tokens=N, temperature=0, ignore_eos=True)
    for ids, adapter, ref in cases:
        engine.add_request(EngineRequest("one", ids, params, adapter))
        got = []
        while engine.has_work():
            got += [t for d in engine.step() for t in d.token_ids]
        assert got == ref, (adapter, got, ref)


def test_dora_lora_and_base_rows_in_one_batch_match_peft(engine, cases):
    params = SamplingParams(max_tokens=N, temperature=0, ignore_eos=True)
    for i, (ids, adapter, _) in enumerate(cases):
        engine.add_request(EngineRequest(f"m{i}", ids, params, adapter))
    got: dict[str, list[int]] = {}
    most = 0
    while engine.has_work():
        for d in engine.step():
            got.setdefault(d.request_id, []).extend(d.token_ids)
        most = max(most, len({c.seq.lora for c in engine.last_step.chunks}))
        if engine.runner.last_lora is not None and engine.runner.last_lora.scale_offsets is not None:
            assert (engine.runner.last_lora.scale_offsets >= 0).any()
    assert most == len(DORA) + 2  # every DoRA adapter, the LoRA one and the base in one forward
    for i, (_, adapter, ref) in enumerate(cases):
        assert got[f"m{i}"] == ref, adapter


def test_a_mixture_with_a_dora_adapter_is_refused_at_admission(engine):
    from server.engine.llm_engine import EngineRequest
    from server.engine.sampling_params import SamplingParams

    req = EngineRequest("mix", [1, 2, 3], SamplingParams(max_tokens=1), mixture=((LORA, 0.5), ("dora_qv8", 0.5)))
    with pytest.raises(ValueError, match="DoRA adapter .dora_qv8. cannot be part of a mixture"):
        engine.check_request(req)
