"""LoRA shrink y = x @ A_s.T, A_s read from the unified pool at its slot's offset, masked to rank r_s.

SGMV: one program per (row tile of a segment, segment, rank tile); the segment's rows share one
adapter, so its A tile is loaded once per row tile. BGMV (multi-size, as S-LoRA's MBGMV): one
program per (row, rank tile) for decode, where each row may have its own adapter and rank.
"""

import os

import torch
import triton
import triton.language as tl

from kernels.lora_batch import LoRABatchInfo

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MIN_DOT = 16  # tl.dot wants every dimension >= 16: smaller tiles are padded and masked
_MAX_RANK_TILE = 64
_BLOCK_K = 64  # input features per inner step


@triton.jit
def lora_dot(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # Triton's interpreter multiplies the raw bits of bf16 operands in tl.dot (triton#11584);
    # bf16 products are exact in fp32, so upcasting there changes nothing but that.
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _sgmv_shrink_kernel(
    x_ptr,
    pool_ptr,
    a_offsets_ptr,
    y_ptr,
    seg_indptr_ptr,
    seg_slots_ptr,
    ranks_ptr,
    d_in,
    stride_xt,
    stride_yt,
    stride_off,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    seg = tl.program_id(1)
    slot = tl.load(seg_slots_ptr + seg)
    if slot < 0:
        return
    a_off = tl.load(a_offsets_ptr + slot * stride_off)
    seg_end = tl.load(seg_indptr_ptr + seg + 1)
    row0 = tl.load(seg_indptr_ptr + seg) + tl.program_id(0) * BLOCK_M
    rank = tl.load(ranks_ptr + slot)
    r0 = tl.program_id(2) * BLOCK_R
    if (a_off < 0 or row0 >= seg_end) or r0 >= rank:
        return
    rows = (row0 + tl.arange(0, BLOCK_M)).to(tl.int64)  # (BLOCK_M,)
    r = r0 + tl.arange(0, BLOCK_R)  # (BLOCK_R,)
    row_mask, r_mask = rows < seg_end, r < rank
    k = tl.arange(0, BLOCK_K)
    a_ptr = pool_ptr + a_off + r[None, :] * d_in  # A_s (r_s, in) row-major, read as (k, r) tiles
    acc = tl.zeros((BLOCK_M, BLOCK_R), tl.float32)
    for k0 in range(0, d_in, BLOCK_K):
        kk = k0 + k
        k_mask = kk < d_in
        xt = tl.load(
            x_ptr + rows[:, None] * stride_xt + kk[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0
        )  # (BLOCK_M, BLOCK_K)
        at = tl.load(a_ptr + kk[:, None], mask=k_mask[:, None] & r_mask[None, :], other=0.0)  # (BLOCK_K, BLOCK_R)
        acc = lora_dot(xt, at, acc, DOT_PRECISION, UPCAST)
    y = y_ptr + rows[:, None] * stride_yt + r[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & r_mask[None, :])


@triton.jit
def _bgmv_shrink_kernel(
    x_ptr,
    pool_ptr,
    a_offsets_ptr,
    y_ptr,
    row_slots_ptr,
    ranks_ptr,
    d_in,
    stride_xt,
    stride_yt,
    stride_off,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(row_slots_ptr + row)
    if slot < 0:
        return
    a_off = tl.load(a_offsets_ptr + slot * stride_off)
    rank = tl.load(ranks_ptr + slot)
    r0 = tl.program_id(1) * BLOCK_R
    if a_off < 0 or r0 >= rank:
        return
    r = r0 + tl.arange(0, BLOCK_R)  # (BLOCK_R,)
    r_mask = r < rank
    k = tl.arange(0, BLOCK_K)
    a_ptr = pool_ptr + a_off + r[:, None] * d_in
    # A matrix-vector product: elementwise products summed once at the end, no tl.dot.
    acc = tl.zeros((BLOCK_R, BLOCK_K), tl.float32)
    for k0 in range(0, d_in, BLOCK_K):
        kk = k0 + k
        k_mask = kk < d_in
        xv = tl.load(x_ptr + row * stride_xt + kk, mask=k_mask, other=0.0).to(tl.float32)  # (BLOCK_K,)
        a = tl.load(a_ptr + kk[None, :], mask=r_mask[:, None] & k_mask[None, :], other=0.0)  # (BLOCK_R, BLOCK_K)
        acc += a.to(tl.float32) * xv[None, :]
    tl.store(y_ptr + row * stride_yt + r, tl.sum(acc, 1).to(y_ptr.dtype.element_ty), mask=r_mask)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs ask for fp32 accuracy: no TF32 rounding inside tl.dot.
    return "ieee" if dtype == torch.float32 else "tf32"


def rank_tile(max_rank: int) -> int:
    return max(_MIN_DOT, min(_MAX_RANK_TILE, triton.next_power_of_2(max_rank)))


def check_lora_inputs(x: torch.Tensor, pool: torch.Tensor, offsets: torch.Tensor, info: LoRABatchInfo) -> None:
    """What every LoRA kernel assumes of its activations, the pool, one module's offsets and the info."""
    assert x.dim() == 2 and x.stride(1) == 1, f"x must be (T, features) with contiguous rows, got {tuple(x.shape)}"
    assert x.dtype in DTYPES and pool.dtype == x.dtype, f"dtypes: x {x.dtype}, pool {pool.dtype}"
    assert pool.dim() == 1 and pool.is_contiguous(), "pool must be one flat contiguous tensor"
    assert offsets.dtype == torch.int64 and offsets.shape == info.ranks.shape, "offsets: (num_slots,) int64"
    assert info.row_slots.shape == (x.shape[0],), f"{info.num_rows} row slots for {x.shape[0]} rows"
    tensors = (x, pool, offsets, info.row_slots, info.seg_indptr, info.seg_slots, info.ranks, info.scalings)
    devices = {t.device for t in tensors}
    assert len(devices) == 1, f"inputs on several devices: {devices}"
    assert x.is_cuda or interpreting(), "needs CUDA tensors (or TRITON_INTERPRET=1)"
    assert all(t.is_contiguous() for t in tensors[3:]), "batch-info tensors must be contiguous"


def _shrink_output(x: torch.Tensor, info: LoRABatchInfo) -> torch.Tensor:
    # Zeros: columns past a row's rank and base-only rows are never written by the kernels.
    return torch.zeros(x.shape[0], info.max_rank, dtype=x.dtype, device=x.device)  # (T, max_rank)


def sgmv_shrink_fwd(
    x: torch.Tensor,  # (T, in)
    pool: torch.Tensor,  # (N,) flat unified pool, x's dtype
    a_offsets: torch.Tensor,  # (num_slots,) int64, where A_s (r_s, in) starts in the pool; < 0 = none
    info: LoRABatchInfo,  # reads seg_indptr, seg_slots, ranks, max_rank, max_seg_len
) -> torch.Tensor:  # (T, max_rank), x's dtype; row t holds x_t @ A_s.T in its first r_s columns, zeros after
    check_lora_inputs(x, pool, a_offsets, info)
    y = _shrink_output(x, info)
    S = info.seg_slots.shape[0]
    if x.shape[0] == 0 or S == 0:
        return y
    block_m = max(_MIN_DOT, min(64, triton.next_power_of_2(info.max_seg_len)))
    block_r = rank_tile(info.max_rank)
    grid = (triton.cdiv(info.max_seg_len, block_m), S, triton.cdiv(info.max_rank, block_r))
    _sgmv_shrink_kernel[grid](
        x, pool, a_offsets, y, info.seg_indptr, info.seg_slots, info.ranks,
        x.shape[1], x.stride(0), y.stride(0), a_offsets.stride(0),
        BLOCK_M=block_m,
        BLOCK_R=block_r,
        BLOCK_K=_BLOCK_K,
        DOT_PRECISION=dot_precision(x.dtype),
        UPCAST=interpreting(),
    )
    return y


def bgmv_shrink_fwd(
    x: torch.Tensor,  # (T, in)
    pool: torch.Tensor,  # (N,)
    a_offsets: torch.Tensor,  # (num_slots,) int64; < 0 = none
    info: LoRABatchInfo,  # reads row_slots, ranks, max_rank
) -> torch.Tensor:  # (T, max_rank), as sgmv_shrink_fwd
    check_lora_inputs(x, pool, a_offsets, info)
    y = _shrink_output(x, info)
    if x.shape[0] == 0:
        return y
    block_r = rank_tile(info.max_rank)
    _bgmv_shrink_kernel[(x.shape[0], triton.cdiv(info.max_rank, block_r))](
        x, pool, a_offsets, y, info.row_slots, info.ranks,
        x.shape[1], x.stride(0), y.stride(0), a_offsets.stride(0),
        BLOCK_R=block_r,
        BLOCK_K=_BLOCK_K,
    )
    return y
