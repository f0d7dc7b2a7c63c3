"""Matmul with GGUF block-quantized weights in torch: dequantize the blocks, then one fp32 F.linear.

The reference for kernels/cpu/quant_matmul.c and the path wherever that kernel does not run.
A block holds 32 consecutive inputs of one output row; a row of W is in_features / 32 blocks:
  Q8_0 (34 bytes): fp16 d, 32 int8 q          -> w = q * d
  Q4_0 (18 bytes): fp16 d, 16 bytes of nibbles -> w = d * (q - 8)
  Q4_1 (20 bytes): fp16 d, fp16 m, 16 bytes    -> w = d * q + m (two roundings, no FMA)
  F32 (128 bytes): 32 float32, as they are (a dense fp32 weight viewed as bytes: the same kernels serve it)
  BF16 (64 bytes): 32 bfloat16, widened to fp32 (exact)
Byte i's low nibble is input i of the block, its high nibble input i + 16 (ggml's order).
The products are gguf's own dequantize, float for float; activations are never quantized.
"""

import torch
import torch.nn.functional as F

F32, Q4_0, Q4_1, Q8_0, BF16 = 0, 2, 3, 8, 30  # ggml_type values
BLOCK = 32  # inputs per block
BLOCK_BYTES = {F32: 128, Q4_0: 18, Q4_1: 20, Q8_0: 34, BF16: 64}
TYPE_NAMES = {F32: "F32", Q4_0: "Q4_0", Q4_1: "Q4_1", Q8_0: "Q8_0", BF16: "BF16"}


def check_inputs(x: torch.Tensor, blocks: torch.Tensor, qtype: int) -> int:
    """in_features, or ValueError naming what does not fit (real checks: python -O keeps them)."""
    if qtype not in BLOCK_BYTES:
        raise ValueError(f"ggml type {qtype} is not one of {sorted(TYPE_NAMES.values())}")
    bb = BLOCK_BYTES[qtype]
    if blocks.dtype != torch.uint8 or blocks.dim() != 2 or blocks.shape[1] % bb:
        raise ValueError(f"blocks must be (out, n * {bb}) uint8 for {TYPE_NAMES[qtype]}, got {tuple(blocks.shape)}")
    k = blocks.shape[1] // bb * BLOCK
    if x.dim() != 2 or x.shape[1] != k or not x.is_floating_point():
        raise ValueError(f"x must be (T, {k}) floating point, got {tuple(x.shape)} {x.dtype}")
    if x.device != blocks.device:
        raise ValueError(f"x is on {x.device}, the blocks on {blocks.device}")
    return k


def dequantize(blocks: torch.Tensor, qtype: int) -> torch.Tensor:
    """(rows, n * block_bytes) uint8 -> (rows, n * 32) float32."""
    rows = blocks.shape[0]
    if qtype == F32:
        return blocks.view(torch.float32)
    if qtype == BF16:
        return blocks.view(torch.bfloat16).float()
    b = blocks.reshape(rows, -1, BLOCK_BYTES[qtype])  # (rows, n, bb)
    d = b[..., :2].contiguous().view(torch.float16).float()  # (rows, n, 1)
    if qtype == Q8_0:
        w = b[..., 2:].contiguous().view(torch.int8).float() * d  # (rows, n, 32)
    else:
        qs = b[..., 4:] if qtype == Q4_1 else b[..., 2:]  # (rows, n, 16)
        q = torch.cat((qs & 15, qs >> 4), dim=-1)  # (rows, n, 32): low nibbles first
        if qtype == Q4_0:
            w = d * (q.to(torch.int8) - 8).float()
        else:
            w = d * q.float() + b[..., 2:4].contiguous().view(torch.float16).float()
    return w.reshape(rows, -1)


def quant_matmul(
    x: torch.Tensor,  # (T, in) float
    blocks: torch.Tensor,  # (out, in / 32 * block_bytes) uint8, one row of blocks per output
    qtype: int,  # Q8_0, Q4_0 or Q4_1
) -> torch.Tensor:  # (T, out) in x's dtype, computed in fp32
    check_inputs(x, blocks, qtype)
    return F.linear(x.float(), dequantize(blocks, qtype)).to(x.dtype)
