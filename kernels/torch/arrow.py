"""Torch twins of per-token Arrow: the scores, top-k and softmax weights, and the weighted expand.

PEFT's ArrowLoraLinearLayer semantics per routed row: scores |x . v_c| over the row's candidates that
target the projection, top_k of them, softmax(top / temperature) over those, the rest weigh 0; the
delta is sum_c w_c * scale_c * B_c A_c x. Rows with levels, where some of their candidates do not target
the projection: scores |cos(x, v_c)| / level_c, and the base competes at 1 with a zero delta
(kernels/arrow_rows.py).
"""

import torch

from kernels.arrow_rows import ArrowRows


def arrow_weights(
    x: torch.Tensor,  # (T, in)
    pool: torch.Tensor,  # (N,) flat unified pool, x's dtype
    proto_offsets: torch.Tensor,  # (num_slots,) int64, where slot s's prototype v_s (in,) starts; < 0 = not here
    arrow: ArrowRows,
) -> torch.Tensor:  # (R, C) float32 mixture weight of each routed row's candidates; 0 = not chosen
    R, C = arrow.cand_slots.shape
    d_in = x.shape[1]
    assert pool.dim() == 1 and pool.dtype == x.dtype and proto_offsets.dtype == torch.int64
    if R == 0:
        return torch.zeros(0, C, device=x.device)
    idx = proto_offsets.clamp(min=0)[:, None] + torch.arange(d_in, device=x.device)  # (num_slots, in)
    protos = pool[idx].float()  # (num_slots, in); rows of absent slots are junk, masked below
    xs = x.index_select(0, arrow.rows).float()  # (R, in)
    slots = arrow.cand_slots.clamp(min=0)  # (R, C)
    scores = (xs @ protos.T).abs().gather(1, slots)  # (R, C)
    valid = (arrow.cand_slots >= 0) & (proto_offsets[slots] >= 0)  # (R, C)
    scores = scores.masked_fill(~valid, float("-inf"))
    real = arrow.cand_slots >= 0
    calibrated = (arrow.levels[:, 0] > 0) & valid.any(1) & (valid != real).any(1)  # (R,)
    cal = scores / (xs.norm(dim=1, keepdim=True) * arrow.levels).clamp(min=1e-30)  # (R, C) |cos| / level
    base = torch.where(calibrated, 1.0, float("-inf"))[:, None]  # (R, 1) the base competes only there
    scores = torch.cat([torch.where(calibrated[:, None], cal, scores), base], 1)  # (R, C + 1)
    k = min(arrow.max_top_k, C + 1)
    top, at = scores.topk(k, dim=1)  # (R, k); ties: the first, as the C kernel
    top = top.masked_fill(torch.arange(k, device=x.device) >= arrow.top_k[:, None], float("-inf"))
    w = (top * arrow.inv_temperature[:, None]).softmax(dim=1)  # (R, k); NaN rows: no candidate targets it
    w = torch.where(torch.isfinite(top), w, 0.0)
    return torch.zeros(R, C + 1, device=x.device).scatter_(1, at, w)[:, :C]  # the base's share: no delta


def entry_weights(weights: torch.Tensor, arrow: ArrowRows) -> torch.Tensor:
    """(R, C) candidate weights -> (E,) float32, the weight of each (row, candidate) entry."""
    ew = torch.zeros(arrow.entries.num_rows, device=weights.device)  # (E,)
    pad = arrow.cand_entries >= 0
    return ew.index_put_((arrow.cand_entries[pad],), weights[pad])


def arrow_apply(x, out, pool, a_offsets, b_offsets, proto_offsets, arrow: ArrowRows, apply_rows=None,
                apply_weighted=None, weigh=None) -> None:
    """out (T, out) += each routed row's weighted candidate deltas. The entries' deltas come from
    `apply_rows` (a LoRA kernel with kernels.torch.lora.lora_apply's signature; the weights are applied
    after it) or `apply_weighted` (the same plus row_weights=, applied inside: kernels/cpu/lora.py, which
    skips the entries of weight 0, so only the chosen candidates' factors are read). `weigh` (x, pool,
    proto_offsets, arrow) -> (E,) entry weights replaces the twin's (kernels/cpu/arrow.py)."""
    if weigh is not None:
        w = weigh(x, pool, proto_offsets, arrow)  # (E,)
    else:
        w = entry_weights(arrow_weights(x, pool, proto_offsets, arrow), arrow)  # (E,)
    rows = arrow.entries.entry_rows  # (E,)
    delta = out.new_zeros(rows.shape[0], out.shape[1])  # (E, out)
    xs = x.index_select(0, rows)  # (E, in)
    if apply_weighted is not None:
        apply_weighted(xs, delta, pool, a_offsets, b_offsets, arrow.entries, row_weights=w)
    else:
        apply_rows(xs, delta, pool, a_offsets, b_offsets, arrow.entries)
        delta = (delta.float() * w[:, None]).to(out.dtype)
    out.index_add_(0, rows, delta)


def arrow_expand(
    x: torch.Tensor,  # (T, in), the projection's input (scored against the prototypes)
    y: torch.Tensor,  # (E, max_rank), the entries' shrink x_row @ A_slot.T
    out: torch.Tensor,  # (T, out), accumulated in place
    pool: torch.Tensor,  # (N,)
    b_offsets: torch.Tensor,  # (num_slots,) int64; < 0 = none
    proto_offsets: torch.Tensor,  # (num_slots,) int64; < 0 = none
    arrow: ArrowRows,
) -> None:
    """Twin of the Triton fused score + top-k + expand (kernels/triton/arrow_expand.py)."""
    weights = arrow_weights(x, pool, proto_offsets, arrow)  # (R, C)
    info = arrow.entries
    ranks, scalings = info.ranks.tolist(), info.scalings.tolist()
    offs, d_out, base = b_offsets.tolist(), out.shape[1], pool.storage_offset()
    acc = torch.zeros(arrow.rows.shape[0], d_out, device=out.device)  # (R, out)
    for r, (slots, entries, ws) in enumerate(zip(arrow.cand_slots.tolist(), arrow.cand_entries.tolist(),
                                                 weights.tolist(), strict=True)):
        for s, e, w in zip(slots, entries, ws, strict=True):
            if s < 0 or w == 0.0 or offs[s] < 0:
                continue
            b_t = pool.as_strided((ranks[s], d_out), (1, ranks[s]), base + offs[s]).float()  # (r, out) = B_s.T
            acc[r] += (w * scalings[s]) * (y[e, : ranks[s]].float() @ b_t)
    out.index_add_(0, arrow.rows, acc.to(out.dtype))
