"""The LoRA step on CPUs: one C call for every small adapter group, a GEMM pair per large one.

Decode rows mostly come one or two per adapter; for them the torch twin's two GEMM calls per group
cost more in dispatch than in math, and the C kernel (lora.c) reads each factor straight from the
pool instead. Groups of more than SMALL_GROUP_ROWS rows (prefill chunks, popular adapters) reuse
the factors across rows, where a GEMM wins. Same signature as the twin, checked against it.
"""

import ctypes

import torch

from kernels.cpu.build import load, ptr
from kernels.limits import MAX_LORA_RANK
from kernels.lora_batch import LoRABatchInfo
from kernels.torch.lora import compute_dtype

SMALL_GROUP_ROWS = 8

_FUNCS = {torch.float32: "lora_apply_f32", torch.bfloat16: "lora_apply_bf16"}


def available(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _FUNCS and load("lora") is not None


def lora_apply(
    x: torch.Tensor,  # (T, in)
    out: torch.Tensor,  # (T, out), accumulated in place
    pool: torch.Tensor,  # (N,) flat unified pool, x's dtype
    a_offsets: torch.Tensor,  # (num_slots,) int64, where A_s (r_s, in) starts in the pool; < 0 = none
    b_offsets: torch.Tensor,  # (num_slots,) int64, where B_s (out, r_s) starts; < 0 = none
    info: LoRABatchInfo,
    row_weights: torch.Tensor | None = None,  # (T,) float32, each row's delta times this; 0 = skipped
) -> None:
    """out += w_t * scale_s * B_s (A_s x_t) for every row t with a slot s; base-only rows untouched."""
    groups = info.row_groups()
    if not groups.spans:
        return
    assert pool.dim() == 1 and pool.stride(0) == 1 and pool.dtype == x.dtype == out.dtype
    assert x.dim() == out.dim() == 2 and x.stride(1) == out.stride(1) == 1 and x.shape[0] == out.shape[0]
    assert a_offsets.dtype == b_offsets.dtype == torch.int64
    if row_weights is not None:
        assert row_weights.shape == (x.shape[0],) and row_weights.dtype == torch.float32
        assert row_weights.is_contiguous() and row_weights.device == x.device
    rank = max(r for _, _, r, _ in groups.spans)
    if rank > MAX_LORA_RANK:  # a real check, not an assert: python -O would run the step without its deltas
        raise ValueError(f"LoRA rank {rank} is above {MAX_LORA_RANK}, the most lora.c accepts")
    d_in, d_out = x.shape[1], out.shape[1]
    a_offs = a_offsets[groups.slots]  # (G,), a fresh contiguous tensor
    b_offs = b_offsets[groups.slots]  # (G,)
    status = getattr(load("lora"), _FUNCS[x.dtype])(
        ptr(x),
        ctypes.c_int64(x.stride(0)),
        ptr(out),
        ctypes.c_int64(out.stride(0)),
        ptr(pool),
        ctypes.c_int64(d_in),
        ctypes.c_int64(d_out),
        ctypes.c_int64(len(groups.spans)),
        ptr(groups.rows),
        ptr(groups.table),
        ptr(groups.group_scalings),
        ptr(a_offs),
        ptr(b_offs),
        ctypes.c_int64(SMALL_GROUP_ROWS),
        ctypes.c_int64(torch.get_num_threads()),
        None if row_weights is None else ptr(row_weights),
    )
    if status != 0:  # as above: never let a refused call pass silently
        raise ValueError(f"lora.c refused the shapes (status {status}, in={d_in}, max rank {info.max_rank})")
    large = [g for g, (start, end, _, _) in enumerate(groups.spans) if end - start > SMALL_GROUP_ROWS]
    if not large:
        return
    cdt, base = compute_dtype(x.dtype), pool.storage_offset()
    a_list, b_list = a_offs.tolist(), b_offs.tolist()
    for g in large:
        start, end, r, scale = groups.spans[g]
        if a_list[g] < 0 or b_list[g] < 0:
            continue
        a_t = pool.as_strided((d_in, r), (1, d_in), base + a_list[g]).to(cdt)  # (in, r) = A_s.T
        b_t = pool.as_strided((r, d_out), (1, r), base + b_list[g]).to(cdt)  # (r, out) = B_s.T
        rows = slice(start, end) if groups.order is None else groups.order[start:end]  # (m,)
        if row_weights is not None:  # only the rows of nonzero weight (per-token Arrow's chosen entries)
            rows = torch.arange(start, end) if groups.order is None else rows
            rows = rows[row_weights[rows] != 0]  # (m',)
            delta = x.index_select(0, rows).to(cdt) @ a_t @ b_t * row_weights[rows, None].to(cdt)  # (m', out)
            out.index_add_(0, rows, delta.to(out.dtype), alpha=scale)
            continue
        delta = x[rows].to(cdt) @ a_t @ b_t  # (m, out)
        if groups.order is None:
            out[start:end].add_(delta, alpha=scale)
        else:
            out.index_add_(0, rows, delta.to(out.dtype), alpha=scale)
