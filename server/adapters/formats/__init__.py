"""Adapter formats: one small class per format (lora, dora) knows its config, tensors, pool layout and math."""

from server.adapters.formats.base import AdapterFormat, BaseWeight, Expected
from server.adapters.formats.dora import DORA, DoRAFormat, dora_scale
from server.adapters.formats.lora import LORA, LoRAFormat

FORMATS: dict[str, AdapterFormat] = {f.name: f for f in (LORA, DORA)}
CONFIG_FIELDS = frozenset().union(*(f.config_fields for f in FORMATS.values()))


def format_of(name: str) -> AdapterFormat:
    return FORMATS[name]


def format_for_config(raw: dict) -> AdapterFormat:
    """The most specific format that claims the config; plain LoRA claims every config."""
    return next(f for f in (DORA, LORA) if f.matches(raw))


__all__ = [
    "CONFIG_FIELDS", "DORA", "FORMATS", "LORA", "AdapterFormat", "BaseWeight", "DoRAFormat", "Expected",
    "LoRAFormat", "dora_scale", "format_for_config", "format_of",
]
