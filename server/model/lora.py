"""LoRA added to a plain model by wrapping its projections: base(x) + scale * B(A x) for every row at once."""

from dataclasses import dataclass

import torch
from torch import nn

from kernels import ops
from kernels.lora_batch import LoRABatchInfo
from server.adapters.types import MODULES


@dataclass(slots=True)
class LoRAStep:
    """The adapter rows of one step, shared by every wrapped projection."""

    info: LoRABatchInfo  # row -> slot, segments, per-slot rank and scaling
    a_offsets: torch.Tensor  # (num_slots, L, M) int64, pool offset of A per slot/layer/module; -1 = not targeted
    b_offsets: torch.Tensor  # (num_slots, L, M) int64, pool offset of B


class LoRAContext:
    """One per wrapped model, set by the runner before each forward: the pool and the step's adapter rows."""

    def __init__(self):
        self.pool_flat: torch.Tensor | None = None  # (N,) the unified pool viewed flat
        self.step: LoRAStep | None = None  # None: no adapter rows this step
        # set for a routing pass: (layer, module name) -> that projection's input (T, in), filled by the forward
        self.capture: dict[tuple[int, str], torch.Tensor | None] | None = None


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, layer: int, module: int, ctx: LoRAContext):
        super().__init__()
        self.base = base
        self.layer, self.module = layer, module
        self.ctx = ctx

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (T, in) -> (T, out)
        capture = self.ctx.capture
        if capture is not None and (self.layer, MODULES[self.module]) in capture:
            capture[self.layer, MODULES[self.module]] = x
        out = self.base(x)
        step = self.ctx.step
        if step is not None:
            a = step.a_offsets[:, self.layer, self.module]  # (num_slots,)
            b = step.b_offsets[:, self.layer, self.module]
            ops.lora_apply(x, out, self.ctx.pool_flat, a, b, step.info)
        return out


def add_lora(model: nn.Module) -> LoRAContext:
    """Wrap q/k/v/o/gate/up/down of every decoder layer (once); the base weights stay where they are."""
    ctx = getattr(model, "lora_context", None)
    if ctx is not None:
        return ctx
    ctx = model.lora_context = LoRAContext()
    for i, layer in enumerate(model.model.layers):
        for j, name in enumerate(MODULES):
            parent = layer.self_attn if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else layer.mlp
            setattr(parent, name, LoRALinear(getattr(parent, name), i, j, ctx))
    return ctx
