"""Adapter handles and weights: what the registry hands the pool and the model runner."""

from dataclasses import dataclass, field
from pathlib import Path

import torch

from server.engine.sequence import NO_ADAPTER

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_ID = NO_ADAPTER  # the reserved id of "no adapter" (base-only rows)


class AdapterError(ValueError):
    """An adapter cannot be used; the message names the adapter and the problem."""


@dataclass(frozen=True, slots=True)
class AdapterRef:
    """Immutable handle of a registered adapter; its weights were checked at registration and load on first use."""

    id: int  # unique for the process lifetime, never reused
    name: str
    path: Path  # the adapter directory (adapter_config.json + adapter_model.safetensors)
    rank: int  # r
    alpha: float  # lora_alpha
    use_rslora: bool
    target_modules: tuple[str, ...]  # subset of MODULES, in MODULES order
    layers: tuple[int, ...]  # decoder layers it touches (all, unless layers_to_transform)
    digest: str = ""  # sha256 (hex) of the math config fields and the weights file: the adapter's content identity
    examples: tuple[str, ...] = ()  # example prompts from loraplex.json, for the embedding router
    description: str | None = None  # from loraplex.json
    root: Path | None = None  # the allowed root it was loaded under; weights are re-read only from inside it
    format: str = "lora"  # server/adapters/formats: "lora" or "dora" (PEFT use_dora)

    @property
    def scaling(self) -> float:
        return self.alpha / (self.rank**0.5 if self.use_rslora else self.rank)

    @property
    def routing_texts(self) -> tuple[str, ...]:
        """What the embedding router embeds: the examples, then the description."""
        return (*self.examples, self.description) if self.description else self.examples


@dataclass(slots=True)
class AdapterWeights:
    """Dense adapter factors in PEFT layout, keyed by (layer, module)."""

    ref: AdapterRef
    a: dict[tuple[int, str], torch.Tensor]  # (r, in_features)
    b: dict[tuple[int, str], torch.Tensor]  # (out_features, r)
    # the format's other factors by name, e.g. DoRA's "magnitude" -> (layer, module) -> (out_features,)
    extra: dict[str, dict[tuple[int, str], torch.Tensor]] = field(default_factory=dict)

    @property
    def factors(self) -> dict[str, dict[tuple[int, str], torch.Tensor]]:
        """Every factor by name, as the formats name them ("a", "b", then the extras)."""
        return {"a": self.a, "b": self.b, **self.extra}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for f in self.factors.values() for t in f.values())
