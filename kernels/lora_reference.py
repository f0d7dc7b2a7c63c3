"""The plain reference for the LoRA kernels: row by row, dense, fp32. Tests only."""

import torch

from kernels.lora_batch import LoRABatchInfo


def _factor(pool: torch.Tensor, offset: int, rows: int, cols: int) -> torch.Tensor:
    return pool[offset : offset + rows * cols].view(rows, cols).float()


def shrink_reference(x, pool, a_offsets, info: LoRABatchInfo) -> torch.Tensor:
    """x (T, in) -> (T, max_rank) fp32: row t gets x_t @ A_s.T in its first r_s columns, zeros elsewhere."""
    y = torch.zeros(x.shape[0], info.max_rank)  # (T, max_rank)
    ranks, offsets = info.ranks.tolist(), a_offsets.tolist()
    for t, s in enumerate(info.row_slots.tolist()):
        if s >= 0 and offsets[s] >= 0:
            y[t, : ranks[s]] = x[t].float().cpu() @ _factor(pool.cpu(), offsets[s], ranks[s], x.shape[1]).T
    return y


def expand_reference(y, pool, b_offsets, info: LoRABatchInfo, out_features: int) -> torch.Tensor:
    """y (T, max_rank) -> (T, out) fp32 delta: row t gets scale_s * y_t[:r_s] @ B_s.T."""
    delta = torch.zeros(y.shape[0], out_features)  # (T, out)
    ranks, scalings, offsets = info.ranks.tolist(), info.scalings.tolist(), b_offsets.tolist()
    for t, s in enumerate(info.row_slots.tolist()):
        if s >= 0 and offsets[s] >= 0:
            b = _factor(pool.cpu(), offsets[s], out_features, ranks[s])  # (out, r)
            delta[t] = scalings[s] * (y[t, : ranks[s]].float().cpu() @ b.T)
    return delta


def lora_reference(x, pool, a_offsets, b_offsets, info: LoRABatchInfo, out_features: int) -> torch.Tensor:
    """x (T, in) -> (T, out) fp32 delta: scale_s * x_t @ A_s.T @ B_s.T per row, 0 for base-only rows."""
    return expand_reference(shrink_reference(x, pool, a_offsets, info), pool, b_offsets, info, out_features)


def dora_rescale_reference(out, pool, scale_offsets, info: LoRABatchInfo) -> torch.Tensor:
    """out (T, out) -> (T, out) fp32: row t with slot s times the scale vector at pool[scale_offsets[s]:]
    (DoRA's m / ||W + s B A|| per output channel); rows without a slot or offset (< 0) unchanged."""
    got = out.float().cpu().clone()  # (T, out)
    offsets = scale_offsets.tolist()
    for t, s in enumerate(info.row_slots.tolist()):
        if s >= 0 and offsets[s] >= 0:
            got[t] *= pool.cpu()[offsets[s] : offsets[s] + out.shape[1]].float()
    return got
