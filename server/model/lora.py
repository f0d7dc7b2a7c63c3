"""LoRA added to a plain model by wrapping its projections: base(x) + scale * B(A x) for every row at once.

DoRA rows (server/adapters/formats/dora.py) then get their per-channel scale m / ||W + s B A|| applied
to base + LoRA (bias excluded, as PEFT), in the same call, next to plain LoRA and base rows.

Rows routed per token by Arrow (kernels/arrow_rows.py) then add their candidates' deltas, weighted
by this projection's own input against the candidates' prototypes.

A wrapped projection reads the step it is given (server/model/batch.py ForwardStep): its adapter rows,
and for a routing pass which inputs to keep. Nothing per step is stored on the model.
"""

from collections.abc import Callable

import torch
from torch import nn

from kernels import ops
from server.adapters.types import MODULES
from server.model.batch import ForwardStep


class LoRALinear(nn.Module):
    reads_step = True  # the model hands it the ForwardStep (server/model/llama.py `project`)

    def __init__(self, base: nn.Module, layer: int, module: int):
        super().__init__()
        self.base = base
        self.layer, self.module = layer, module

    def forward(self, x: torch.Tensor, step: ForwardStep | None = None) -> torch.Tensor:  # x (T, in) -> (T, out)
        return self.add_delta(x, self.base(x), step)

    def add_delta(self, x: torch.Tensor, out: torch.Tensor, step: ForwardStep | None) -> torch.Tensor:
        """out (T, out) = base(x), possibly a column view of a fused GEMM's output: the step's deltas added in place."""
        capture = step.capture if step is not None else None
        if capture is not None and (key := (self.layer, MODULES[self.module])) in capture:
            capture[key] = x
        lora = step.lora if step is not None else None
        if lora is not None and lora.targeted[self.layer][self.module]:
            a = lora.a_offsets[:, self.layer, self.module]  # (num_slots,)
            b = lora.b_offsets[:, self.layer, self.module]
            ops.lora_apply(x, out, lora.pool_flat, a, b, lora.info)
            if lora.arrow is not None:
                protos = lora.proto_offsets[:, self.layer, self.module]  # (num_slots,)
                ops.arrow_apply(x, out, lora.pool_flat, a, b, protos, lora.arrow)
            if lora.scale_offsets is not None:
                self._dora_rescale(out, lora)
        return out

    def _dora_rescale(self, out: torch.Tensor, lora) -> None:
        bias = getattr(self.base, "bias", None)
        if bias is not None:  # PEFT scales W x + s B A x, not the bias: take it out of every row, then back
            out.sub_(bias)
        ops.dora_rescale(out, lora.pool_flat, lora.scale_offsets[:, self.layer, self.module], lora.info)
        if bias is not None:
            out.add_(bias)


def _projection(model: nn.Module, layer: int, name: str) -> nn.Module:
    block = model.model.layers[layer]
    proj = getattr(block.self_attn if name in MODULES[:4] else block.mlp, name)
    return proj.base if isinstance(proj, LoRALinear) else proj


def base_weights(model: nn.Module) -> Callable[[int, str], torch.Tensor]:
    """(layer, module name) -> that projection's base weight W (out, in), dense (GGUF blocks dequantized).

    DoRA's page-in needs W for its norm ||W + s B A||; a reader, not a copy, so nothing is held twice."""

    def weight(layer: int, name: str) -> torch.Tensor:
        proj = _projection(model, layer, name)
        return proj.dequantize() if hasattr(proj, "dequantize") else proj.weight.detach()

    return weight


def add_lora(model: nn.Module) -> None:
    """Wrap q/k/v/o/gate/up/down of every decoder layer (once); the base weights stay where they are."""
    for i, layer in enumerate(model.model.layers):
        for j, name in enumerate(MODULES):
            parent = layer.self_attn if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else layer.mlp
            if not isinstance(getattr(parent, name), LoRALinear):
                setattr(parent, name, LoRALinear(getattr(parent, name), i, j))
