"""The LoRA step on CPUs: one C call for every small adapter group, a GEMM pair per large one.

Decode rows mostly come one or two per adapter; for them the torch twin's two GEMM calls per group
cost more in dispatch than in math, and the C kernel (lora.c) reads each factor straight from the
pool instead. Groups of more than SMALL_GROUP_ROWS rows (prefill chunks, popular adapters) reuse
the factors across rows, where a GEMM wins. Same signature as the twin, checked against it.
"""

import torch

from kernels.cpu.build import bind, load
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
    assert a_offsets.stride() == b_offsets.stride() and a_offsets.dim() == 1 and groups.slots.is_contiguous()
    status = bind("lora", _FUNCS[x.dtype], "pipipiiippppppiiip")(
        x.data_ptr(), x.stride(0), out.data_ptr(), out.stride(0), pool.data_ptr(), d_in, d_out, len(groups.spans),
        groups.rows.data_ptr(), groups.table.data_ptr(), groups.group_scalings.data_ptr(), groups.slots.data_ptr(),
        a_offsets.data_ptr(), b_offsets.data_ptr(), a_offsets.stride(0), SMALL_GROUP_ROWS, torch.get_num_threads(),
        None if row_weights is None else row_weights.data_ptr(),
    )  # fmt: skip
    if status != 0:  # as above: never let a refused call pass silently
        raise ValueError(f"lora.c refused the shapes (status {status}, in={d_in}, max rank {info.max_rank})")
    large = [g for g, (start, end, _, _) in enumerate(groups.spans) if end - start > SMALL_GROUP_ROWS]
    if not large:
        return
    cdt, base = compute_dtype(x.dtype), pool.storage_offset()
    a_list, b_list = a_offsets[groups.slots].tolist(), b_offsets[groups.slots].tolist()
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
