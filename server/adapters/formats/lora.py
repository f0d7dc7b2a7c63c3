"""Plain LoRA: out = base(x) + scaling * B A x. The base class is exactly this format."""

from server.adapters.formats.base import AdapterFormat


class LoRAFormat(AdapterFormat):
    """PEFT LoRA: A and B per (layer, module), both copied into the pool as they are."""


LORA = LoRAFormat()
