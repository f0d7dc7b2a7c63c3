"""Per-token Arrow, fused: scores |x . v_c| over a routed row's candidates, top-k, softmax, weighted expand.

One program per (routed row, tile of output features). The scores (a dot over `in` per candidate) are
recomputed by each output tile: C * in reads of x and the prototypes, less than one expand tile of B
for the ranks served here, and no device round trip for the weights. Only the chosen candidates'
B factors are read. Rows with levels, at a projection only some of their candidates target, score |cos| / level
and the base competes at 1 in lane C (kernels/arrow_rows.py). The shrink of every (row, candidate) entry runs
before it in the SGMV/BGMV shrink.
Twin: kernels/torch/arrow.py arrow_expand.
"""

import torch
import triton
import triton.language as tl

from kernels.arrow_rows import ArrowRows
from kernels.triton.lora_shrink import interpreting, rank_tile

_BLOCK_N = 64  # output features per program
_BLOCK_IN = 128  # input features per step of the score loop


@triton.jit
def _arrow_expand_kernel(
    x_ptr, y_ptr, out_ptr, pool_ptr, b_offsets_ptr, proto_offsets_ptr,
    rows_ptr, cand_slots_ptr, cand_entries_ptr, levels_ptr, top_k_ptr, inv_temp_ptr, ranks_ptr, scalings_ptr,
    d_in, d_out, stride_xt, stride_yt, stride_ot, stride_off,
    C: tl.constexpr, BLOCK_C: tl.constexpr, K_MAX: tl.constexpr,
    BLOCK_IN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    row = tl.load(rows_ptr + r)
    c = tl.arange(0, BLOCK_C)  # (BLOCK_C,); lane C: the base, where it competes
    slots = tl.load(cand_slots_ptr + r * C + c, mask=c < C, other=-1)
    p_off = tl.load(proto_offsets_ptr + tl.maximum(slots, 0) * stride_off, mask=slots >= 0, other=-1)
    valid = (slots >= 0) & (p_off >= 0)
    levels = tl.load(levels_ptr + r * C + c, mask=c < C, other=1.0)  # (BLOCK_C,)
    # scores
    s = tl.zeros((BLOCK_C,), tl.float32)
    xx = tl.zeros((BLOCK_IN,), tl.float32)
    for k0 in range(0, d_in, BLOCK_IN):
        kk = k0 + tl.arange(0, BLOCK_IN)
        k_mask = kk < d_in
        xv = tl.load(x_ptr + row * stride_xt + kk, mask=k_mask, other=0.0).to(tl.float32)  # (BLOCK_IN,)
        p = tl.load(pool_ptr + p_off[:, None] + kk[None, :], mask=valid[:, None] & k_mask[None, :], other=0.0)
        s += tl.sum(p.to(tl.float32) * xv[None, :], 1)  # (BLOCK_C,)
        xx += xv * xv
    present = tl.sum(valid.to(tl.int32), 0)
    real = tl.sum((slots >= 0).to(tl.int32), 0)
    lv0 = tl.sum(tl.where(c == 0, levels, 0.0), 0)
    calibrated = ((lv0 > 0.0).to(tl.int32) * (present > 0).to(tl.int32) * (present < real).to(tl.int32)) != 0
    norm = tl.sqrt(tl.sum(xx, 0))
    cal = tl.abs(s) / tl.maximum(norm * levels, 1e-30)
    scores = tl.where(valid, tl.where(calibrated, cal, tl.abs(s)), float("-inf"))
    scores = tl.where(c == C, tl.where(calibrated, 1.0, float("-inf")), scores)
    # top-k by repeated argmax
    k_row = tl.load(top_k_ptr + r)
    chosen = tl.zeros((BLOCK_C,), tl.int32)
    left = scores
    for j in tl.static_range(K_MAX):
        best = tl.max(left, 0)
        i = tl.argmax(left, 0)
        ok = tl.where(k_row > j, best > float("-inf"), False)
        chosen = tl.where((c == i) & ok, 1, chosen)
        left = tl.where(c == i, float("-inf"), left)
    top = tl.max(tl.where(chosen != 0, scores, float("-inf")), 0)
    inv_t = tl.load(inv_temp_ptr + r)
    e = tl.where(chosen != 0, tl.exp((scores - top) * inv_t), 0.0)
    w = e / tl.maximum(tl.sum(e, 0), 1e-30)  # (BLOCK_C,); all 0 when no candidate targets this projection
    # weighted expand of the chosen candidates
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_mask = n < d_out
    k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for ci in tl.static_range(C):
        wc = tl.sum(tl.where(c == ci, w, 0.0), 0)
        if wc != 0.0:
            slot = tl.load(cand_slots_ptr + r * C + ci)  # ci < C: the base (lane C) adds nothing
            entry = tl.load(cand_entries_ptr + r * C + ci)
            b_off = tl.load(b_offsets_ptr + slot * stride_off)
            rank = tl.load(ranks_ptr + slot)
            coef = wc * tl.load(scalings_ptr + slot)
            if b_off >= 0:
                part = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
                for k0 in range(0, rank, BLOCK_K):
                    kk = k0 + k
                    k_mask = kk < rank
                    yv = tl.load(y_ptr + entry * stride_yt + kk, mask=k_mask, other=0.0).to(tl.float32)
                    b = tl.load(pool_ptr + b_off + n[:, None] * rank + kk[None, :],
                                mask=n_mask[:, None] & k_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_K)
                    part += b.to(tl.float32) * yv[None, :]
                acc += tl.sum(part, 1) * coef
    o = out_ptr + row * stride_ot + n
    # routed rows are distinct token rows: no atomics
    total = tl.load(o, mask=n_mask, other=0.0).to(tl.float32) + acc
    tl.store(o, total.to(out_ptr.dtype.element_ty), mask=n_mask)


def arrow_expand_fwd(
    x: torch.Tensor,  # (T, in), the projection's input
    y: torch.Tensor,  # (E, max_rank), shrink of the entries (arrow.entries)
    out: torch.Tensor,  # (T, out), accumulated in place
    pool: torch.Tensor,  # (N,)
    b_offsets: torch.Tensor,  # (num_slots,) int64; < 0 = none
    proto_offsets: torch.Tensor,  # (num_slots,) int64, prototype v_s (in,) of each slot; < 0 = not targeted
    arrow: ArrowRows,
) -> None:
    info = arrow.entries
    assert pool.dim() == 1 and pool.is_contiguous() and pool.dtype == out.dtype and out.stride(1) == 1
    assert b_offsets.dtype == proto_offsets.dtype == torch.int64 and b_offsets.shape == info.ranks.shape
    assert x.is_cuda or interpreting(), "needs CUDA tensors (or TRITON_INTERPRET=1)"
    assert x.dim() == 2 and x.stride(1) == 1 and x.shape[0] == out.shape[0] and x.dtype == out.dtype
    assert y.shape == (info.num_rows, info.max_rank) and y.stride(1) == 1 and y.dtype == out.dtype
    assert proto_offsets.shape == b_offsets.shape and proto_offsets.stride(0) == b_offsets.stride(0)
    assert all(t.is_contiguous() for t in (arrow.rows, arrow.cand_slots, arrow.cand_entries, arrow.levels, arrow.top_k))
    R, C = arrow.cand_slots.shape
    if R == 0:
        return
    _arrow_expand_kernel[(R, triton.cdiv(out.shape[1], _BLOCK_N))](
        x, y, out, pool, b_offsets, proto_offsets,
        arrow.rows, arrow.cand_slots, arrow.cand_entries, arrow.levels, arrow.top_k, arrow.inv_temperature,
        info.ranks, info.scalings,
        x.shape[1], out.shape[1], x.stride(0), y.stride(0), out.stride(0), b_offsets.stride(0),
        C=C, BLOCK_C=max(2, triton.next_power_of_2(C + 1)), K_MAX=min(arrow.max_top_k, C + 1),
        BLOCK_IN=_BLOCK_IN, BLOCK_N=_BLOCK_N, BLOCK_K=rank_tile(info.max_rank),
    )

