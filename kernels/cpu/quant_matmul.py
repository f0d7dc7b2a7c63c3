"""Matmul with GGUF block-quantized weights on CPUs (quant_matmul.c): blocks dequantized inside the
dot products, activations kept in fp32, on torch's own OpenMP threads. Same signature as the torch
twin, checked against it; bf16 x is widened to fp32 and the result rounded back.
"""

import ctypes

import torch

from kernels.cpu.build import bind, load, ptr
from kernels.torch.quant_matmul import BLOCK, BLOCK_BYTES, check_inputs

# Up to this many rows of x take the register path (each block dequantized in registers for 4 rows at a time,
# the weight row re-read from L1 for the next 4); more rows the tiled path, or from 16 rows (8 on AVX2) the
# packed one, from 128 the wide one (quant_matmul.c says why). Measured here at 5-15 rows, SmolLM2's shapes:
# registers 1.1-1.3x the tiled path up to 8 rows (dense fp32; equal on Q4_1), slower from 10
# (bench/quant_matmul.py).
GEMV_MAX_ROWS = 8
ISAS = {"scalar": 0, "avx2": 1, "avx512": 2}
# Dense fp32 weights (type F32) take this kernel up to this many rows of x, torch's GEMM beyond. Measured on
# the 2-core AVX-512 host, SmolLM2's shapes, one run under load from other jobs (bench/results/
# quant_matmul_packed.json): the packed outer-product path 1.3-2.6x torch's GEMM at 16-2048 rows, 1 and 2
# threads, so every step of the default 2048-token budget stays here.
F32_MAX_ROWS = 4096
F32 = 0
_DTYPES = (torch.float32, torch.bfloat16)


def available(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _DTYPES and load("quant_matmul") is not None


def serves(x: torch.Tensor, qtype: int) -> bool:
    """Whether this kernel is the better path for x on weights of qtype (else the twin)."""
    return qtype != F32 or x.shape[0] <= F32_MAX_ROWS


def best_isa() -> int:
    """The path the kernel picks on this CPU (ISAS); the lower ones run here too."""
    return load("quant_matmul").quant_best_isa()


def quant_matmul(
    x: torch.Tensor,  # (T, in) float32 or bfloat16
    blocks: torch.Tensor,  # (out, in / 32 * block_bytes) uint8, one row of blocks per output
    qtype: int,  # Q8_0, Q4_0, Q4_1 or F32 (kernels.torch.quant_matmul)
) -> torch.Tensor:  # (T, out) in x's dtype
    bb = BLOCK_BYTES.get(qtype)
    if (  # the decode case, ~120 calls a step: checked inline and called with plain ints
        x.dtype is torch.float32 and x.dim() == 2 and x.stride(1) == 1 and bb is not None
        and blocks.dtype is torch.uint8 and blocks.dim() == 2 and blocks.stride(1) == 1
        and x.shape[1] * bb == blocks.shape[1] * BLOCK and blocks.device.type == "cpu"
    ):  # fmt: skip
        T, k = x.shape
        N = blocks.shape[0]
        out = torch.empty(T, N, dtype=torch.float32)
        status = bind("quant_matmul", "quant_matmul_f32", "pipipiiiiiiii")(
            x.data_ptr(), x.stride(0), blocks.data_ptr(), blocks.stride(0), out.data_ptr(), N, T, N, k, qtype, -1,
            GEMV_MAX_ROWS, torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise ValueError(f"quant_matmul.c refused (status {status}): x {tuple(x.shape)}, type {qtype}")
        return out
    return run(x, blocks, qtype)


def run(x: torch.Tensor, blocks: torch.Tensor, qtype: int, isa: int = -1, gemv_rows: int = GEMV_MAX_ROWS):
    """quant_matmul on a chosen path: isa (ISAS; -1 = the best here), gemv_rows (tests force each)."""
    k = check_inputs(x, blocks, qtype)
    if x.dtype not in _DTYPES or blocks.stride(1) != 1:
        raise ValueError(f"the C kernel takes float32/bfloat16 x and blocks with contiguous rows, got {x.dtype}")
    xf = x.float()
    if xf.stride(1) != 1 or xf.stride(0) < k:
        xf = xf.contiguous()
    T, N = x.shape[0], blocks.shape[0]
    out = torch.empty(T, N, dtype=torch.float32)
    status = load("quant_matmul").quant_matmul_f32(
        ptr(xf), ctypes.c_int64(xf.stride(0)), ptr(blocks), ctypes.c_int64(blocks.stride(0)),
        ptr(out), ctypes.c_int64(N), ctypes.c_int64(T), ctypes.c_int64(N), ctypes.c_int64(k),
        ctypes.c_int64(qtype), ctypes.c_int64(isa), ctypes.c_int64(gemv_rows),
        ctypes.c_int64(torch.get_num_threads()),
    )  # fmt: skip
    if status != 0:
        raise ValueError(f"quant_matmul.c refused (status {status}): x {tuple(x.shape)}, type {qtype}, isa {isa}")
    return out if x.dtype == torch.float32 else out.to(x.dtype)
