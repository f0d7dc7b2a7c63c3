"""Torch twin of the DoRA rescale: out[t] *= scale_s (out,) for the rows whose slot has a scale vector.

DoRA's output is m / ||W + s B A|| * (base(x) + s B A x) per output channel; the LoRA kernels add
the delta, this multiplies by the per-channel scale the adapter manager stored in the pool at page-in.
"""

import torch

from kernels.lora_batch import LoRABatchInfo


def dora_rescale(
    out: torch.Tensor,  # (T, out), base + LoRA of every row, rescaled in place
    pool: torch.Tensor,  # (N,) flat unified pool, out's dtype
    scale_offsets: torch.Tensor,  # (num_slots,) int64, where slot s's scale (out,) starts; < 0 = no rescale
    info: LoRABatchInfo,
) -> None:
    groups = info.row_groups()
    if not groups.spans:
        return
    assert pool.dim() == 1 and pool.stride(0) == 1 and pool.dtype == out.dtype
    assert info.entry_rows is None, "a DoRA rescale applies to token rows, not mixture entries"
    d_out = out.shape[1]
    offsets = scale_offsets[groups.slots].tolist()
    order = None if groups.order is None else groups.order.to(out.device)
    for (start, end, _, _), off in zip(groups.spans, offsets, strict=True):
        if off < 0:
            continue
        scale = pool[off : off + d_out]  # (out,)
        if order is None:
            out[start:end].mul_(scale)
        else:
            rows = order[start:end]  # (m,)
            out.index_copy_(0, rows, out.index_select(0, rows) * scale)
