"""What an adapter format is: the one place that knows its config fields, tensors, pool layout and math.

A format is a small stateless object. The config parser asks which format a PEFT config is and lets
it refuse what it cannot serve; the loader asks which tensors the file must hold; the manager asks
how much pool each (layer, module) needs and what to write there; the runner hands the kernels the
offsets of every pool factor the format names, and each wrapped projection applies what it finds.
"""

from collections.abc import Callable, Iterator

import torch

from router.prototypes import adapter_prototypes
from server.adapters.shapes import peft_prefix

Shape = tuple[int, ...]
# PEFT key -> (factor, (layer, module), shape): the tensors an adapter file must hold
Expected = dict[str, tuple[str, tuple[int, str], Shape]]
# (layer, module name) -> the base projection's dense weight W (out, in); what DoRA's norm needs
BaseWeight = Callable[[int, str], torch.Tensor]


class AdapterFormat:
    """LoRA's core, shared by every format: A (r, in) and B (out, r) per targeted (layer, module)."""

    name = "lora"
    config_fields: frozenset[str] = frozenset()  # PEFT config fields this format handles beyond LoRA's
    file_factors: tuple[str, ...] = ("a", "b")  # the factors the file holds per (layer, module)
    # the factors the pool holds (the kernels' inputs); "proto": Arrow's prototype per (layer, module), the top
    # right singular vector (in,) of B A, what per-token routing scores each token's input against
    pool_factors: tuple[str, ...] = ("a", "b", "proto")

    def matches(self, raw: dict) -> bool:
        """Whether a PEFT config (adapter_config.json as a dict) is of this format."""
        return True

    def config_problem(self, raw: dict) -> str | None:
        """Why this format cannot serve the config (naming the field), or None."""
        return None

    def tensors(self, layer: int, module: str, rank: int, fan_in: int, fan_out: int) -> Expected:
        prefix = peft_prefix(layer, module)
        return {
            f"{prefix}.lora_A.weight": ("a", (layer, module), (rank, fan_in)),
            f"{prefix}.lora_B.weight": ("b", (layer, module), (fan_out, rank)),
        }

    def pool_sizes(self, rank: int, fan_in: int, fan_out: int) -> dict[str, int]:
        """Elements of each pool factor of one (layer, module)."""
        return {"a": rank * fan_in, "b": fan_out * rank, "proto": fan_in}

    def pool_tensors(self, ref, factors: dict[str, dict[tuple[int, str], torch.Tensor]],
                     base_weight: BaseWeight | None) -> Iterator[tuple[tuple[int, str, str], torch.Tensor]]:
        """(TensorKey, values) to write into the pool; computed here once per page-in, never per step."""
        for factor in ("a", "b"):
            for (layer, module), t in factors[factor].items():
                yield (layer, module, factor), t

    # pool factors written only when a step first needs them (their space is reserved at page-in): the
    # prototypes' QR/eigh per module cost ~10 ms an adapter, which serving without per-token Arrow never uses
    lazy_factors: tuple[str, ...] = ("proto",)

    def lazy_tensors(self, ref, factors: dict[str, dict[tuple[int, str], torch.Tensor]], factor: str,
                     ) -> Iterator[tuple[tuple[int, str, str], torch.Tensor]]:
        assert factor == "proto", factor
        for (layer, module), v in adapter_prototypes(factors["a"], factors["b"]).items():
            yield (layer, module, "proto"), v
