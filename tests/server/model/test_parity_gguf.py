"""--weights gguf: the model on the GGUF file's own blocks is transformers' fp32 model from the same file
(its dequantized weights), greedy token for token, alone, in a staggered batch and with LoRA adapters."""

import pytest
import torch

from server.config import EngineConfig
from server.engine.llm_engine import EngineRequest, LLMEngine
from server.engine.sampling_params import SamplingParams
from server.model.loader import build_model
from server.model.quant import QuantEmbedding, QuantLinear
from tests.conftest import MAX_POSITIONS
from tests.server.model.peft_cases import ADAPTERS, PROMPTS, N, peft_greedy
from tests.server.model.prompts import PROMPTS as LONG_PROMPTS

NEW_TOKENS = 24
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)


@pytest.fixture(scope="module")
def gguf_model(checkpoint):
    return build_model(checkpoint, MAX_POSITIONS, torch.float32, "cpu", weights="gguf")


@pytest.fixture(scope="module")
def make_gguf_engine(checkpoint, gguf_model):
    def make(**overrides) -> LLMEngine:
        cfg = dict(dtype="float32", weights="gguf", pool_mb=64, max_model_len=MAX_POSITIONS, **overrides)
        return LLMEngine(EngineConfig(**cfg), checkpoint, gguf_model)

    return make


@pytest.fixture(scope="module")
def prompt_ids(checkpoint):
    tok = checkpoint.tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": "Name a primary colour."}], add_generation_prompt=True,
                                   tokenize=False)  # fmt: skip
    return [tok(p)["input_ids"] for p in LONG_PROMPTS] + [tok(chat, add_special_tokens=False)["input_ids"]]


@pytest.fixture(scope="module")
def reference(hf_fp32, prompt_ids):
    with torch.inference_mode():
        outs = [hf_fp32.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 attention_mask=torch.ones(1, len(ids))) for ids in prompt_ids]  # fmt: skip
    return [o[0, len(ids) :].tolist() for o, ids in zip(outs, prompt_ids, strict=True)]


def projections(model):
    """(name, QuantLinear) of each projection, named as in transformers: not the fused GEMMs, not the head."""
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear) and name != "lm_head" and ".fused_" not in name:
            yield name.removesuffix(".base"), mod


def dense_weights(model) -> dict[str, torch.Tensor]:
    """name -> dense weight of the fp32 model, whether held as parameters or as F32 blocks (CPU kernel)."""
    dense = {n.replace(".base.", "."): p for n, p in model.named_parameters()}
    dense.update({f"{name}.weight": mod.dequantize() for name, mod in projections(model)})
    return dense


def test_every_projection_and_the_tied_head_run_on_blocks(gguf_model, fp32_model):
    m = gguf_model
    assert not any(isinstance(mod, torch.nn.Linear) for mod in m.modules())
    assert isinstance(m.model.embed_tokens, QuantEmbedding) and isinstance(m.lm_head, QuantLinear)
    assert m.lm_head.blocks.data_ptr() == m.model.embed_tokens.blocks.data_ptr()  # tied: one table
    # an engine built on either model earlier in the session wraps its projections in LoRA (`.base`)
    dense = dense_weights(fp32_model)
    for name, mod in projections(m):
        assert torch.equal(mod.dequantize(), dense[f"{name}.weight"]), name
    assert torch.equal(m.model.embed_tokens.weight, dense["model.embed_tokens.weight"])
    fp32_bytes = sum(w.numel() * 4 for w in dense.values())
    gguf_bytes = sum({b.data_ptr(): b.numel() for b in m.buffers() if b.dtype == torch.uint8}.values())
    assert gguf_bytes < fp32_bytes / 4


def test_logits_match_the_dense_model(gguf_model, fp32_model, checkpoint):
    x = torch.randn(5, checkpoint.config.hidden_size)
    torch.testing.assert_close(gguf_model.logits(x), fp32_model.logits(x), rtol=1e-5, atol=1e-4)


def test_one_at_a_time_matches_transformers(make_gguf_engine, prompt_ids, reference):
    engine = make_gguf_engine()
    for ids, ref in zip(prompt_ids, reference, strict=True):
        assert engine.generate([ids], GREEDY)[0] == ref


def test_staggered_batch_matches_transformers(make_gguf_engine, prompt_ids, reference):
    engine = make_gguf_engine(max_batch_tokens=96)  # chunked prefills mixed with decodes
    outputs: dict[str, list[int]] = {}
    pending = list(enumerate(prompt_ids))
    widest = 0
    while pending or engine.has_work():
        if pending:
            i, ids = pending.pop(0)
            engine.add_request(EngineRequest(f"p{i}", ids, GREEDY))
        for d in engine.step():
            outputs.setdefault(d.request_id, []).extend(d.token_ids)
        widest = max(widest, len(engine.last_step.decodes))
    assert widest > 4  # the tiled path ran, not only the register one
    assert [outputs[f"p{i}"] for i in range(len(prompt_ids))] == reference


@pytest.fixture(scope="module")
def adapter_cases(checkpoint, peft_model):
    tok = checkpoint.tokenizer
    return [
        (tok(p)["input_ids"], adapter, peft_greedy(peft_model, tok(p)["input_ids"], adapter))
        for p in PROMPTS
        for adapter in [None, *ADAPTERS]
    ]


def test_adapters_in_one_batch_match_peft(make_gguf_engine, peft_adapters, adapter_cases):
    engine = make_gguf_engine()
    for name in ADAPTERS:
        engine.registry.register(name, peft_adapters / name)
    params = SamplingParams(max_tokens=N, temperature=0, ignore_eos=True)
    for i, (ids, adapter, _) in enumerate(adapter_cases):
        engine.add_request(EngineRequest(f"m{i}", ids, params, adapter))
    got: dict[str, list[int]] = {}
    while engine.has_work():
        for d in engine.step():
            got.setdefault(d.request_id, []).extend(d.token_ids)
    for i, (_, adapter, ref) in enumerate(adapter_cases):
        assert got[f"m{i}"] == ref, adapter
