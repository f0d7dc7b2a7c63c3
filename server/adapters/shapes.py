"""What a LoRA factor must look like on a Llama-family base: (in, out) features of each module."""

from server.adapters.types import MODULES


def num_layers(config) -> int:
    return int(config.num_hidden_layers)


def module_shapes(config) -> dict[str, tuple[int, int]]:
    """module -> (in_features, out_features); A is (r, in), B is (out, r)."""
    hidden, inter = int(config.hidden_size), int(config.intermediate_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    shapes = {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    assert tuple(shapes) == MODULES
    return shapes


def peft_prefix(layer: int, module: str) -> str:
    """The module's name in the tensor names PEFT's save_pretrained writes."""
    group = "self_attn" if module in MODULES[:4] else "mlp"
    return f"base_model.model.model.layers.{layer}.{group}.{module}"


def peft_key(layer: int, module: str, factor: str) -> str:
    """The tensor name PEFT's save_pretrained writes (factor is "A" or "B")."""
    return f"{peft_prefix(layer, module)}.lora_{factor}.weight"
