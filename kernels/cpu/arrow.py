"""Per-token Arrow on CPUs, one C call per projection (arrow.c): the entry weights alone, or the weights and
the chosen candidates' deltas (what serves); checked against the twin."""

import ctypes

import torch

from kernels.arrow_rows import ArrowRows
from kernels.cpu.build import load, ptr

_FUNCS = {torch.float32: "arrow_weights_f32", torch.bfloat16: "arrow_weights_bf16"}
_APPLY = {torch.float32: "arrow_apply_f32", torch.bfloat16: "arrow_apply_bf16"}
MAX_CANDIDATES = 64


def available(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _FUNCS and load("arrow") is not None


def entry_weights(
    x: torch.Tensor,  # (T, in)
    pool: torch.Tensor,  # (N,) flat unified pool, x's dtype
    proto_offsets: torch.Tensor,  # (num_slots,) int64, prototype v_s (in,) of each slot; < 0 = not here
    arrow: ArrowRows,
) -> torch.Tensor:  # (E,) float32, weight of each (row, candidate) entry of arrow.entries; 0 = not chosen
    R, C = arrow.cand_slots.shape
    assert pool.dim() == 1 and pool.stride(0) == 1 and pool.dtype == x.dtype and x.stride(1) == 1
    assert proto_offsets.dtype == torch.int64 and proto_offsets.dim() == 1  # (num_slots,), read in place by stride
    if C > MAX_CANDIDATES:
        raise ValueError(f"{C} candidates per row; arrow.c takes at most {MAX_CANDIDATES}")
    w = torch.zeros(arrow.entries.num_rows)  # (E,)
    status = getattr(load("arrow"), _FUNCS[x.dtype])(
        ptr(x), ctypes.c_int64(x.stride(0)), ptr(pool), ctypes.c_int64(x.shape[1]), ptr(proto_offsets),
        ctypes.c_int64(proto_offsets.stride(0)), ctypes.c_int64(R), ctypes.c_int64(C), ptr(arrow.rows),
        ptr(arrow.cand_slots), ptr(arrow.cand_entries),
        ptr(arrow.levels), ptr(arrow.top_k), ptr(arrow.inv_temperature), ptr(w),
    )
    if status != 0:
        raise ValueError(f"arrow.c refused the call (status {status})")
    return w


def arrow_apply(
    x: torch.Tensor,  # (T, in)
    out: torch.Tensor,  # (T, out), accumulated in place on the routed rows
    pool: torch.Tensor,  # (N,)
    a_offsets: torch.Tensor,  # (num_slots,) int64; < 0 = none
    b_offsets: torch.Tensor,  # (num_slots,) int64; < 0 = none
    proto_offsets: torch.Tensor,  # (num_slots,) int64; < 0 = not targeted
    arrow: ArrowRows,
) -> None:
    """Weights and the chosen candidates' deltas in one C call (rows of one routed row never split)."""
    R, C = arrow.cand_slots.shape
    info = arrow.entries
    assert pool.dim() == 1 and pool.stride(0) == 1 and pool.dtype == x.dtype == out.dtype
    assert x.stride(1) == out.stride(1) == 1 and x.shape[0] == out.shape[0]
    if C > MAX_CANDIDATES:
        raise ValueError(f"{C} candidates per row; arrow.c takes at most {MAX_CANDIDATES}")
    if R == 0:
        return
    offs = (proto_offsets, a_offsets, b_offsets)  # columns of the step's (slots, L, M) tables, read in place
    assert all(t.dtype == torch.int64 and t.dim() == 1 and t.stride(0) == proto_offsets.stride(0) for t in offs)
    status = getattr(load("arrow"), _APPLY[x.dtype])(
        ptr(x), ctypes.c_int64(x.stride(0)), ptr(out), ctypes.c_int64(out.stride(0)), ptr(pool),
        ctypes.c_int64(x.shape[1]), ctypes.c_int64(out.shape[1]), *(ptr(t) for t in offs),
        ctypes.c_int64(proto_offsets.stride(0)),
        ptr(info.ranks), ptr(info.scalings), ctypes.c_int64(R), ctypes.c_int64(C), ptr(arrow.rows),
        ptr(arrow.cand_slots), ptr(arrow.levels), ptr(arrow.top_k), ptr(arrow.inv_temperature),
        ctypes.c_int64(torch.get_num_threads()),
    )
    if status != 0:
        raise ValueError(f"arrow.c refused the shapes (status {status}, in={x.shape[1]}, out={out.shape[1]})")
