"""Linear and Embedding layers over GGUF block-quantized weights (Q8_0, Q4_0, Q4_1), kept as raw blocks.

They replace nn.Linear / nn.Embedding in a built model (server/model/gguf_weights.py swaps them in),
as gpt-fast applies quantisation: the model file stays as it is. The matmuls never quantize the
activations (kernels.ops.quant_matmul): a QuantLinear computes the fp32 matmul on its dequantized
weights, up to summation order, whatever the compute dtype.
"""

import torch
from torch import nn

from kernels import ops
from kernels.torch.quant_matmul import BLOCK, BLOCK_BYTES, TYPE_NAMES, dequantize


def _check_blocks(blocks: torch.Tensor, qtype: int, in_features: int) -> None:
    if qtype not in BLOCK_BYTES:
        raise ValueError(f"ggml type {qtype} is not one of {sorted(TYPE_NAMES.values())}")
    row_bytes = in_features // BLOCK * BLOCK_BYTES[qtype]
    if in_features % BLOCK or blocks.dtype != torch.uint8 or blocks.dim() != 2 or blocks.shape[1] != row_bytes:
        raise ValueError(
            f"{TYPE_NAMES[qtype]} blocks for {in_features} inputs must be (out, {row_bytes}) uint8, "
            f"got {tuple(blocks.shape)} {blocks.dtype}"
        )


class QuantLinear(nn.Module):
    """y = x @ dequant(blocks)^T (+ bias), in x's dtype; a drop-in for nn.Linear (and a LoRALinear base)."""

    def __init__(self, blocks: torch.Tensor, qtype: int, in_features: int, bias: torch.Tensor | None = None):
        super().__init__()
        _check_blocks(blocks, qtype, in_features)
        if bias is not None and bias.shape != (blocks.shape[0],):
            raise ValueError(f"bias must be ({blocks.shape[0]},), got {tuple(bias.shape)}")
        self.qtype, self.in_features, self.out_features = qtype, in_features, blocks.shape[0]
        self.register_buffer("blocks", blocks)  # (out, in / 32 * block bytes) uint8, one row of blocks per output
        self.register_buffer("bias", bias)  # (out,) in the compute dtype, or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if x.dim() == 2:
            out = ops.quant_matmul(x, self.blocks, self.qtype)  # (T, out)
        else:
            out = ops.quant_matmul(x.reshape(-1, self.in_features), self.blocks, self.qtype)
            out = out.view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out.add_(self.bias)

    def dequantize(self) -> torch.Tensor:
        """The weight as nn.Linear would hold it: (out, in) float32, exactly gguf's dequantize."""
        return dequantize(self.blocks, self.qtype)

    @classmethod
    def cat(cls, parts: "list[QuantLinear]") -> "QuantLinear":
        """One QuantLinear whose outputs are the parts' outputs side by side (fused q/k/v, gate/up): rows of
        blocks stacked, so each output's numbers are its part's. Parts share type, in_features and device;
        a part without bias gets zeros where another has one."""
        first = parts[0]
        for p in parts:
            if (p.qtype, p.in_features, p.blocks.device) != (first.qtype, first.in_features, first.blocks.device):
                raise ValueError(
                    f"cannot fuse {TYPE_NAMES[p.qtype]} ({p.in_features} inputs, {p.blocks.device}) with "
                    f"{TYPE_NAMES[first.qtype]} ({first.in_features} inputs, {first.blocks.device})"
                )
        blocks = torch.cat([p.blocks for p in parts])  # (sum out, row bytes)
        bias = None
        if any(p.bias is not None for p in parts):
            like = next(p.bias for p in parts if p.bias is not None)
            bias = torch.cat([like.new_zeros(p.out_features) if p.bias is None else p.bias for p in parts])
        return cls(blocks, first.qtype, first.in_features, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {TYPE_NAMES[self.qtype]}"


class QuantEmbedding(nn.Module):
    """Rows of a block-quantized table, dequantized per lookup into `dtype`; the tied head reuses the blocks."""

    def __init__(self, blocks: torch.Tensor, qtype: int, embedding_dim: int, dtype: torch.dtype):
        super().__init__()
        _check_blocks(blocks, qtype, embedding_dim)
        self.qtype, self.embedding_dim, self.num_embeddings = qtype, embedding_dim, blocks.shape[0]
        self.out_dtype = dtype
        self.register_buffer("blocks", blocks)  # (vocab, dim / 32 * block bytes) uint8

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (T,) int -> (T, dim)
        rows = self.blocks.index_select(0, ids.reshape(-1))  # (T, row bytes)
        return dequantize(rows, self.qtype).to(self.out_dtype).view(*ids.shape, self.embedding_dim)

    @property
    def weight(self) -> torch.Tensor:
        """The whole table dequantized, (vocab, dim): for one-off readers (the embedding router), never per step."""
        return dequantize(self.blocks, self.qtype).to(self.out_dtype)

    def as_linear(self) -> QuantLinear:
        """The tied output head: logits = h @ table^T on the same blocks (no copy)."""
        return QuantLinear(self.blocks, self.qtype, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {TYPE_NAMES[self.qtype]}"
