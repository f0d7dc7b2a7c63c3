"""--weights bf16: matmul weights rounded to bfloat16 once, fp32 activations and accumulation. Greedy output
equals transformers in fp32 on the same rounded weights, token for token (up to summation order, as GGUF)."""

import copy

import pytest
import torch

from server.config import EngineConfig
from server.engine.llm_engine import LLMEngine
from server.engine.sampling_params import SamplingParams
from server.model.loader import build_model
from server.model.quant import QuantEmbedding, QuantLinear
from tests.conftest import MAX_POSITIONS
from tests.server.model.prompts import PROMPTS

NEW_TOKENS = 16
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)


@pytest.fixture(scope="module")
def bf16_model(checkpoint):
    return build_model(checkpoint, MAX_POSITIONS, torch.float32, "cpu", weights="bf16")


@pytest.fixture(scope="module")
def hf_rounded(hf_fp32):
    model = copy.deepcopy(hf_fp32)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
                module.weight.copy_(module.weight.to(torch.bfloat16).float())
    return model


def test_matmul_weights_are_bf16_blocks(bf16_model):
    from kernels.cpu.build import load

    if load("quant_matmul") is None:
        pytest.skip("no C compiler: bf16 weights need the CPU kernel")
    layer = bf16_model.model.layers[0]
    q = layer.self_attn.q_proj
    assert isinstance(getattr(q, "base", q), QuantLinear) and getattr(q, "base", q).qtype == 30
    assert isinstance(bf16_model.model.embed_tokens, QuantEmbedding)
    assert bf16_model.lm_head.blocks.data_ptr() == bf16_model.model.embed_tokens.blocks.data_ptr()


def test_greedy_equals_transformers_on_the_rounded_weights(checkpoint, bf16_model, hf_rounded):
    from kernels.cpu.build import load

    if load("quant_matmul") is None:
        pytest.skip("no C compiler: bf16 weights need the CPU kernel")
    engine = LLMEngine(EngineConfig(dtype="float32", weights="bf16", pool_mb=64, max_model_len=MAX_POSITIONS),
                       checkpoint, bf16_model)
    prompts = [checkpoint.tokenizer(p)["input_ids"] for p in PROMPTS[:10]]
    with torch.inference_mode():
        ref = [hf_rounded.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                   attention_mask=torch.ones(1, len(ids)))[0, len(ids):].tolist() for ids in prompts]
    assert [engine.generate([ids], GREEDY)[0] for ids in prompts] == ref  # one at a time
    assert engine.generate(prompts, GREEDY) == ref  # batched
