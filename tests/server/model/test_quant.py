"""QuantLinear / QuantEmbedding and the GGUF reader's naming and row order, on small synthetic weights."""

import gguf
import numpy as np
import pytest
import torch

from kernels.torch.quant_matmul import Q4_0, Q4_1, Q8_0
from server.model.gguf_weights import hf_name, unpermute_rows
from server.model.lora import LoRALinear
from server.model.quant import QuantEmbedding, QuantLinear


def blocks_of(qtype: int, rows: int, k: int, seed: int = 0) -> torch.Tensor:
    w = np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32)
    return torch.from_numpy(gguf.quants.quantize(w, gguf.GGMLQuantizationType(qtype)).copy())


def layer(qtype: int, rows: int, k: int, seed: int = 0, bias: bool = False) -> QuantLinear:
    return QuantLinear(blocks_of(qtype, rows, k, seed), qtype, k, torch.randn(rows) if bias else None)


@pytest.mark.parametrize("qtype", [Q8_0, Q4_0, Q4_1])
def test_quant_linear_is_linear_on_its_dequantized_weight(qtype):
    q = layer(qtype, 24, 64, bias=True)
    x = torch.randn(3, 5, 64)
    want = torch.nn.functional.linear(x, q.dequantize(), q.bias)
    torch.testing.assert_close(q(x), want, rtol=1e-5, atol=1e-5)
    assert (q.in_features, q.out_features) == (64, 24) and q(x).shape == (3, 5, 24)


def test_cat_stacks_outputs_and_keeps_each_part_exact():
    parts = [layer(Q4_1, 16, 96, 0, bias=True), layer(Q4_1, 8, 96, 1), layer(Q4_1, 40, 96, 2, bias=True)]
    fused = QuantLinear.cat(parts)
    assert (fused.out_features, fused.in_features, fused.qtype) == (64, 96, Q4_1)
    assert torch.equal(fused.dequantize(), torch.cat([p.dequantize() for p in parts]))
    assert torch.equal(fused.bias[16:24], torch.zeros(8))
    x = torch.randn(7, 96)
    torch.testing.assert_close(fused(x), torch.cat([p(x) for p in parts], dim=1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "other", [lambda: layer(Q8_0, 8, 96), lambda: layer(Q4_1, 8, 64)], ids=["other type", "other width"]
)
def test_cat_refuses_parts_that_do_not_share_a_gemm(other):
    with pytest.raises(ValueError):
        QuantLinear.cat([layer(Q4_1, 8, 96), other()])


def test_blocks_that_do_not_fit_are_refused():
    with pytest.raises(ValueError):
        QuantLinear(blocks_of(Q8_0, 4, 64), Q8_0, 96)
    with pytest.raises(ValueError):
        QuantLinear(blocks_of(Q8_0, 4, 64), 7, 64)
    with pytest.raises(ValueError):
        QuantLinear(blocks_of(Q8_0, 4, 64), Q8_0, 64, bias=torch.zeros(5))


def test_quant_linear_serves_as_a_lora_base():
    q = layer(Q4_0, 12, 32)
    wrapped = LoRALinear(q, 0, 0)
    x = torch.randn(2, 32)
    assert torch.equal(wrapped(x), q(x))


def test_embedding_rows_and_tied_head_share_one_table():
    blocks = blocks_of(Q8_0, 50, 64)
    emb = QuantEmbedding(blocks, Q8_0, 64, torch.float32)
    table = emb.weight  # (50, 64)
    ids = torch.tensor([3, 0, 49, 3])
    assert torch.equal(emb(ids), table[ids])
    head = emb.as_linear()
    assert head.blocks.data_ptr() == blocks.data_ptr()
    h = torch.randn(2, 64)
    torch.testing.assert_close(head(h), h @ table.T, rtol=1e-5, atol=1e-5)
    assert QuantEmbedding(blocks, Q8_0, 64, torch.bfloat16)(ids).dtype == torch.bfloat16


def test_llama_cpp_names_map_to_ours():
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("output_norm.weight") == "model.norm.weight"
    assert hf_name("output.weight") == "lm_head.weight"
    assert hf_name("blk.12.attn_output.weight") == "model.layers.12.self_attn.o_proj.weight"
    assert hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert hf_name("blk.3.attn_q.bias") == "model.layers.3.self_attn.q_proj.bias"
    assert hf_name("blk.0.ffn_gate_exps.weight") is None


@pytest.mark.parametrize("n_head", [1, 3, 9])
def test_unpermuting_rows_matches_transformers(n_head):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.arange(n_head * 8 * 5, dtype=np.float32).reshape(n_head * 8, 5)
    want = LlamaTensorProcessor()._reverse_permute_weights(w, n_head, n_head)
    assert torch.equal(unpermute_rows(torch.from_numpy(w), n_head), torch.from_numpy(np.ascontiguousarray(want)))
    blocks = torch.arange(n_head * 8 * 20, dtype=torch.int64).to(torch.uint8).reshape(n_head * 8, 20)
    rows = unpermute_rows(blocks, n_head)  # whole rows of blocks move together
    order = unpermute_rows(torch.arange(n_head * 8)[:, None], n_head)[:, 0]
    assert torch.equal(rows, blocks[order])
