"""Torch twins of the LoRA shrink/expand kernels: the path that serves on CPU.

Rows are grouped by adapter slot once per step (LoRABatchInfo.row_groups); each call then runs one
matmul per distinct slot on views of that slot's factors in the pool. Weights are never gathered
or padded to the max rank; only rows are gathered, and only when a slot's rows are not one
contiguous run. The SGMV/BGMV split of the Triton kernels does not matter here: same signature,
the segments and row slots are read through the groups.
"""

import torch

from kernels.lora_batch import LoRABatchInfo


def _native_half_gemm() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# Without bf16 hardware (AVX2 hosts) oneDNN's bf16 GEMMs run 4-35x slower than upcasting the operands
# and multiplying in fp32, so there the factors are upcast per call (a temporary, not a stored copy).
_NATIVE_HALF = _native_half_gemm()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype == torch.float32 or _NATIVE_HALF else torch.float32


def lora_shrink(
    x: torch.Tensor,  # (T, in)
    pool: torch.Tensor,  # (N,) flat unified pool, x's dtype
    a_offsets: torch.Tensor,  # (num_slots,) int64, where A_s (r_s, in) starts in the pool; < 0 = none
    info: LoRABatchInfo,
) -> torch.Tensor:  # (T, max_rank), x's dtype; row t holds x_t @ A_s.T in its first r_s columns, zeros after
    T, d_in = x.shape
    groups = info.row_groups()
    if not groups.spans:
        return x.new_zeros(T, info.max_rank)
    assert pool.dim() == 1 and pool.stride(0) == 1 and pool.dtype == x.dtype
    cdt = compute_dtype(x.dtype)
    base, offsets = pool.storage_offset(), a_offsets[groups.slots].tolist()
    order = None if groups.order is None else groups.order.to(x.device)
    xs = (x if order is None else x.index_select(0, order)).to(cdt)  # (n, in) rows grouped by slot
    ys = torch.zeros(xs.shape[0], info.max_rank, dtype=cdt, device=x.device)  # (n, max_rank)
    # Per group: a few torch calls and nothing else, since on CPU their overhead rivals the math.
    for (start, end, r, _), off in zip(groups.spans, offsets, strict=True):
        if off >= 0:
            a_t = pool.as_strided((d_in, r), (1, d_in), base + off)  # (in, r) = A_s.T, a view into the pool
            torch.mm(xs[start:end], a_t if cdt == pool.dtype else a_t.to(cdt), out=ys[start:end, :r])
    if order is None:
        return ys.to(x.dtype)
    y = x.new_zeros(T, info.max_rank)  # (T, max_rank)
    return y.index_copy_(0, order, ys.to(x.dtype))


def lora_expand(
    y: torch.Tensor,  # (T, max_rank), lora_shrink's output
    out: torch.Tensor,  # (T, out), accumulated in place: out_t += scale_s * y_t[:r_s] @ B_s.T
    pool: torch.Tensor,  # (N,)
    b_offsets: torch.Tensor,  # (num_slots,) int64, where B_s (out, r_s) starts in the pool; < 0 = none
    info: LoRABatchInfo,
) -> None:
    d_out = out.shape[1]
    groups = info.row_groups()
    if not groups.spans:
        return
    assert pool.dim() == 1 and pool.stride(0) == 1 and pool.dtype == out.dtype
    cdt = compute_dtype(out.dtype)
    base, offsets = pool.storage_offset(), b_offsets[groups.slots].tolist()
    order = None if groups.order is None else groups.order.to(y.device)
    ys = y if order is None else y.index_select(0, order)  # (n, max_rank)
    ys = ys.to(cdt) * groups.scales.to(device=y.device, dtype=cdt)  # scaled once here, not per group
    delta = torch.zeros(ys.shape[0], d_out, dtype=cdt, device=out.device)  # (n, out); 0 on base-only rows
    for (start, end, r, _), off in zip(groups.spans, offsets, strict=True):
        if off >= 0:
            b_t = pool.as_strided((r, d_out), (1, r), base + off)  # (r, out) = B_s.T
            torch.mm(ys[start:end, :r], b_t if cdt == pool.dtype else b_t.to(cdt), out=delta[start:end])
    if order is None:
        out.add_(delta)
    else:
        out.index_add_(0, order, delta.to(out.dtype))


def lora_apply(
    x: torch.Tensor,  # (T, in)
    out: torch.Tensor,  # (T, out), accumulated in place
    pool: torch.Tensor,  # (N,)
    a_offsets: torch.Tensor,  # (num_slots,) int64; < 0 = none
    b_offsets: torch.Tensor,  # (num_slots,) int64; < 0 = none
    info: LoRABatchInfo,
) -> None:
    """out += the LoRA delta of every row; shrink and expand fused per group when rows need no gather."""
    groups = info.row_groups()
    if groups.order is not None:
        return lora_expand(lora_shrink(x, pool, a_offsets, info), out, pool, b_offsets, info)
    if not groups.spans:
        return
    assert pool.dim() == 1 and pool.stride(0) == 1 and pool.dtype == x.dtype == out.dtype
    d_in, d_out = x.shape[1], out.shape[1]
    cdt = compute_dtype(x.dtype)
    base = pool.storage_offset()
    a_offs, b_offs = a_offsets[groups.slots].tolist(), b_offsets[groups.slots].tolist()
    xs = x.to(cdt)  # (T, in)
    # Fewer torch calls per group than shrink + expand: no (T, max_rank) buffer to fill and re-slice.
    for (start, end, r, scale), a_off, b_off in zip(groups.spans, a_offs, b_offs, strict=True):
        if a_off < 0 or b_off < 0:
            continue
        a_t = pool.as_strided((d_in, r), (1, d_in), base + a_off)  # (in, r) = A_s.T
        b_t = pool.as_strided((r, d_out), (1, r), base + b_off)  # (r, out) = B_s.T
        if cdt == pool.dtype:
            out[start:end].addmm_(xs[start:end] @ a_t, b_t, alpha=scale)
        else:
            out[start:end].add_(xs[start:end] @ a_t.to(cdt) @ b_t.to(cdt), alpha=scale)  # one rounding
