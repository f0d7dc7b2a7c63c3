"""DoRA (PEFT `use_dora=True`): out = m / ||W + s B A||_c * (W x + s B A x) + bias, per output channel c.

As PEFT's tuners/lora/dora.py DoraLinearLayer: the norm is over the input dimension of each output
channel and is a constant at inference. The magnitude m (out,) is in the file; the norm needs the
base weight W, which the file does not have, so the per-channel scale m / ||W + s B A|| is computed
once when the adapter is paged in and stored in the pool next to A and B. A step then costs one
rescale of (base + LoRA) on the DoRA rows only (kernels dora_rescale), so DoRA rows batch with LoRA
and base rows.
"""

import torch

from server.adapters.formats.base import AdapterFormat, BaseWeight, Expected
from server.adapters.shapes import peft_prefix
from server.adapters.types import AdapterError


class DoRAFormat(AdapterFormat):
    name = "dora"
    config_fields = frozenset({"use_dora"})
    file_factors = ("a", "b", "magnitude")
    pool_factors = (*AdapterFormat.pool_factors, "scale")

    def matches(self, raw: dict) -> bool:
        return raw.get("use_dora") is True

    def config_problem(self, raw: dict) -> str | None:
        # PEFT itself refuses lora_bias with DoRA; DoRA on embeddings/conv never gets here (only the
        # q..down projections are targets); use_rslora only changes the scaling, which DoRA's norm uses.
        if raw.get("lora_bias"):
            return "lora_bias=True is not supported with use_dora (PEFT refuses it too)"
        return None

    def tensors(self, layer: int, module: str, rank: int, fan_in: int, fan_out: int) -> Expected:
        expected = super().tensors(layer, module, rank, fan_in, fan_out)
        expected[f"{peft_prefix(layer, module)}.lora_magnitude_vector"] = ("magnitude", (layer, module), (fan_out,))
        return expected

    def pool_sizes(self, rank: int, fan_in: int, fan_out: int) -> dict[str, int]:
        return {**super().pool_sizes(rank, fan_in, fan_out), "scale": fan_out}

    def pool_tensors(self, ref, factors, base_weight: BaseWeight | None):
        yield from super().pool_tensors(ref, factors, base_weight)
        if base_weight is None:
            raise AdapterError(f"adapter {ref.name!r}: DoRA needs the base model's weights to page in")
        for (layer, module), magnitude in factors["magnitude"].items():
            yield (layer, module, "scale"), dora_scale(
                base_weight(layer, module), factors["a"][layer, module], factors["b"][layer, module], magnitude,
                ref.scaling)


def dora_scale(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, magnitude: torch.Tensor,
               scaling: float) -> torch.Tensor:
    """m / ||W + scaling * B A||_2 per output channel, in fp32: W (out, in), A (r, in), B (out, r), m (out,)."""
    w = weight.float() + scaling * (b.float() @ a.float())  # (out, in)
    return magnitude.float() / torch.linalg.norm(w, dim=1)  # (out,)


DORA = DoRAFormat()
