"""Projections that read the same input computed as one GEMM: q/k/v of attention, gate/up of the MLP.

Applied after construction, like the weight swaps: a fused module holds the parts' weights stacked
(QuantLinear.cat) and each part's own weight becomes a view of its rows, so nothing is held twice.
At call time the model hands it the part modules as they are then (plain, or wrapped for LoRA), and each
wrapped part adds its adapter rows' deltas to its own columns of the shared output.
"""

import torch
from torch import nn

from server.model.quant import QuantLinear

GROUPS = {  # block -> (the fused module's attribute there, its parts in output order)
    "self_attn": ("fused_qkv", ("q_proj", "k_proj", "v_proj")),
    "mlp": ("fused_gate_up", ("gate_proj", "up_proj")),
}


def _base(proj: nn.Module) -> nn.Module:
    return getattr(proj, "base", proj)


class FusedProjections(nn.Module):
    def __init__(self, parts: list[QuantLinear]):
        super().__init__()
        fused = QuantLinear.cat(parts)
        self.splits = [p.out_features for p in parts]
        # each part keeps serving alone (and DoRA reads its weight) from its rows of the one copy
        biases = fused.bias.split(self.splits) if fused.bias is not None else [None] * len(parts)
        for p, rows, bias in zip(parts, fused.blocks.split(self.splits), biases, strict=True):
            p.blocks = rows
            if p.bias is not None:
                p.bias = bias
        self.base = fused

    def forward(self, x: torch.Tensor, step, projs: tuple[nn.Module, ...]) -> tuple[torch.Tensor, ...]:
        out = self.base(x)  # (T, sum of outs)
        outs = out.split(self.splits, dim=-1)  # views: each part's columns
        for proj, o in zip(projs, outs, strict=True):
            if getattr(proj, "reads_step", False):
                proj.add_delta(x, o, step)
        return outs


def fuse_projections(model: nn.Module) -> int:
    """Fuse q/k/v and gate/up in every layer whose parts are QuantLinears of one type; returns how many groups."""
    fused = 0
    for layer in model.model.layers:
        for block_name, (attr, names) in GROUPS.items():
            block = getattr(layer, block_name)
            parts = [_base(getattr(block, n)) for n in names]
            if getattr(block, attr, None) is not None or not all(isinstance(p, QuantLinear) for p in parts):
                continue
            if len({(p.qtype, p.in_features) for p in parts}) != 1:
                continue
            setattr(block, attr, FusedProjections(parts))
            fused += 1
    return fused
