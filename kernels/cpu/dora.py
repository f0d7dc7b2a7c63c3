"""The DoRA rescale on CPUs: one C call (dora.c) per wrapped projection. Same signature as the twin."""

import ctypes

import torch

from kernels.cpu.build import load, ptr
from kernels.lora_batch import LoRABatchInfo

_FUNCS = {torch.float32: "dora_rescale_f32", torch.bfloat16: "dora_rescale_bf16"}


def available(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _FUNCS and load("dora") is not None


def dora_rescale(
    out: torch.Tensor,  # (T, out), rescaled in place
    pool: torch.Tensor,  # (N,) flat unified pool, out's dtype
    scale_offsets: torch.Tensor,  # (num_slots,) int64, may be a strided view; < 0 = no rescale
    info: LoRABatchInfo,
) -> None:
    """out[t] *= pool[scale_offsets[s] : + out_features] for every row t with a slot s that has a scale."""
    assert pool.dim() == 1 and pool.stride(0) == 1 and pool.dtype == out.dtype
    assert out.dim() == 2 and out.stride(1) == 1 and out.shape[0] == info.num_rows
    assert scale_offsets.dtype == torch.int64 and scale_offsets.dim() == 1
    assert info.entry_rows is None, "a DoRA rescale applies to token rows, not mixture entries"
    row_slots = info.row_slots
    assert row_slots.dtype == torch.int32 and row_slots.is_contiguous()
    status = getattr(load("dora"), _FUNCS[out.dtype])(
        ptr(out),
        ctypes.c_int64(out.stride(0)),
        ptr(pool),
        ctypes.c_int64(out.shape[1]),
        ctypes.c_int64(out.shape[0]),
        ptr(row_slots),
        ptr(scale_offsets),
        ctypes.c_int64(scale_offsets.stride(0)),
    )
    if status != 0:
        raise ValueError(f"dora.c refused the shapes (status {status})")
