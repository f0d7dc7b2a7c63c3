"""LoRA expand out += scale_s * y[:, :r_s] @ B_s.T, B_s read from the unified pool at its slot's offset.

The reduction runs over the slot's own rank only, so no adapter is padded to the batch's max rank.
SGMV: one program per (row tile of a segment, segment, tile of output features). BGMV: one program
per (row, tile of output features), for decode.
"""

import torch
import triton
import triton.language as tl

from kernels.lora_batch import LoRABatchInfo
from kernels.triton.lora_shrink import check_lora_inputs, dot_precision, interpreting, lora_dot, rank_tile

_MIN_DOT = 16
_BLOCK_N = 64  # output features per program


@triton.jit
def _sgmv_expand_kernel(
    y_ptr,
    pool_ptr,
    b_offsets_ptr,
    out_ptr,
    seg_indptr_ptr,
    seg_slots_ptr,
    ranks_ptr,
    scalings_ptr,
    d_out,
    stride_yt,
    stride_ot,
    stride_off,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    seg = tl.program_id(1)
    slot = tl.load(seg_slots_ptr + seg)
    if slot < 0:
        return
    b_off = tl.load(b_offsets_ptr + slot * stride_off)
    seg_end = tl.load(seg_indptr_ptr + seg + 1)
    row0 = tl.load(seg_indptr_ptr + seg) + tl.program_id(0) * BLOCK_M
    if b_off < 0 or row0 >= seg_end:
        return
    rank = tl.load(ranks_ptr + slot)
    scale = tl.load(scalings_ptr + slot)
    rows = (row0 + tl.arange(0, BLOCK_M)).to(tl.int64)  # (BLOCK_M,)
    n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_mask, n_mask = rows < seg_end, n < d_out
    k = tl.arange(0, BLOCK_K)
    b_ptr = pool_ptr + b_off + n[None, :] * rank  # B_s (out, r_s) row-major, read as (k, n) tiles
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, rank, BLOCK_K):
        kk = k0 + k
        k_mask = kk < rank
        yt = tl.load(
            y_ptr + rows[:, None] * stride_yt + kk[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0
        )  # (BLOCK_M, BLOCK_K)
        bt = tl.load(b_ptr + kk[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0.0)  # (BLOCK_K, BLOCK_N)
        acc = lora_dot(yt, bt, acc, DOT_PRECISION, UPCAST)
    mask = row_mask[:, None] & n_mask[None, :]
    o = out_ptr + rows[:, None] * stride_ot + n[None, :]
    # Segments cover disjoint rows, so the read-modify-write needs no atomics.
    total = tl.load(o, mask=mask, other=0.0).to(tl.float32) + acc * scale
    tl.store(o, total.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bgmv_expand_kernel(
    y_ptr,
    pool_ptr,
    b_offsets_ptr,
    out_ptr,
    row_slots_ptr,
    ranks_ptr,
    scalings_ptr,
    d_out,
    stride_yt,
    stride_ot,
    stride_off,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(row_slots_ptr + row)
    if slot < 0:
        return
    b_off = tl.load(b_offsets_ptr + slot * stride_off)
    if b_off < 0:
        return
    rank = tl.load(ranks_ptr + slot)
    scale = tl.load(scalings_ptr + slot)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_mask = n < d_out
    k = tl.arange(0, BLOCK_K)
    b_ptr = pool_ptr + b_off + n[:, None] * rank
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for k0 in range(0, rank, BLOCK_K):
        kk = k0 + k
        k_mask = kk < rank
        yv = tl.load(y_ptr + row * stride_yt + kk, mask=k_mask, other=0.0).to(tl.float32)  # (BLOCK_K,)
        b = tl.load(b_ptr + kk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_K)
        acc += b.to(tl.float32) * yv[None, :]
    o = out_ptr + row * stride_ot + n
    total = tl.load(o, mask=n_mask, other=0.0).to(tl.float32) + tl.sum(acc, 1) * scale
    tl.store(o, total.to(out_ptr.dtype.element_ty), mask=n_mask)


def _check_expand(y, out, pool, b_offsets, info: LoRABatchInfo) -> None:
    check_lora_inputs(out, pool, b_offsets, info)
    assert y.shape == (out.shape[0], info.max_rank), f"y {tuple(y.shape)}: want ({out.shape[0]}, {info.max_rank})"
    assert y.stride(1) == 1 and y.dtype == out.dtype and y.device == out.device


def sgmv_expand_fwd(
    y: torch.Tensor,  # (T, max_rank), the shrink output
    out: torch.Tensor,  # (T, out), accumulated in place: out_t += scale_s * y_t[:r_s] @ B_s.T
    pool: torch.Tensor,  # (N,) flat unified pool, out's dtype
    b_offsets: torch.Tensor,  # (num_slots,) int64, where B_s (out, r_s) starts in the pool; < 0 = none
    info: LoRABatchInfo,  # reads seg_indptr, seg_slots, ranks, scalings, max_rank, max_seg_len
) -> None:
    _check_expand(y, out, pool, b_offsets, info)
    S = info.seg_slots.shape[0]
    if out.shape[0] == 0 or S == 0:
        return
    block_m = max(_MIN_DOT, min(64, triton.next_power_of_2(info.max_seg_len)))
    grid = (triton.cdiv(info.max_seg_len, block_m), S, triton.cdiv(out.shape[1], _BLOCK_N))
    _sgmv_expand_kernel[grid](
        y, pool, b_offsets, out, info.seg_indptr, info.seg_slots, info.ranks, info.scalings,
        out.shape[1], y.stride(0), out.stride(0), b_offsets.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=_BLOCK_N,
        BLOCK_K=rank_tile(info.max_rank),
        DOT_PRECISION=dot_precision(out.dtype),
        UPCAST=interpreting(),
    )


def bgmv_expand_fwd(
    y: torch.Tensor,  # (T, max_rank)
    out: torch.Tensor,  # (T, out), accumulated in place
    pool: torch.Tensor,  # (N,)
    b_offsets: torch.Tensor,  # (num_slots,) int64; < 0 = none
    info: LoRABatchInfo,  # reads row_slots, ranks, scalings, max_rank
) -> None:
    _check_expand(y, out, pool, b_offsets, info)
    if out.shape[0] == 0:
        return
    _bgmv_expand_kernel[(out.shape[0], triton.cdiv(out.shape[1], _BLOCK_N))](
        y, pool, b_offsets, out, info.row_slots, info.ranks, info.scalings,
        out.shape[1], y.stride(0), out.stride(0), b_offsets.stride(0),
        BLOCK_N=_BLOCK_N,
        BLOCK_K=rank_tile(info.max_rank),
    )
