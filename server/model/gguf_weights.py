"""Our Llama model on a GGUF file's own tensors, read with the `gguf` package.

Q8_0, Q4_0 and Q4_1 tensors stay as their blocks: QuantLinear / QuantEmbedding (server/model/quant.py)
are swapped in for the model's nn.Linear / nn.Embedding after construction. Every other tensor is
dequantized by gguf (F32 and F16 exactly) into the compute dtype, as transformers would load it.

llama.cpp's converter permutes the rows of attn_q and attn_k for its rope layout; transformers
un-permutes them when it dequantizes, and so do we, on whole rows of blocks (blocks run along the
input dim). So the weights are those of transformers' model from the same file, float for float.
"""

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kernels.torch.quant_matmul import BLOCK_BYTES, TYPE_NAMES
from server.model.quant import QuantEmbedding, QuantLinear

log = logging.getLogger(__name__)

TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
IGNORED = ("rope_freqs",)  # llama3 rope factors: the rotary table is built from the config, as transformers does


@dataclass(slots=True)
class GGUFTensor:
    data: torch.Tensor  # kept blocks: (rows, row bytes) uint8; else dense float32 in the logical shape
    qtype: int | None  # ggml type of kept blocks; None = dense


def hf_name(gguf_name: str) -> str | None:
    """llama.cpp's tensor name -> transformers' (ours); None when unknown."""
    base, _, kind = gguf_name.rpartition(".")
    if base in TOP_NAMES:
        return f"{TOP_NAMES[base]}.{kind}"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if m and m[2] in LAYER_NAMES:
        return f"model.layers.{m[1]}.{LAYER_NAMES[m[2]]}.{kind}"
    return None


def unpermute_rows(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows (out, ...) from llama.cpp's rope order back to transformers' (its _reverse_permute_weights)."""
    dim = t.shape[0] // n_head // 2
    return t.reshape(n_head, dim, 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape).contiguous()


def read_tensors(path: Path, num_heads: int, num_kv_heads: int) -> dict[str, GGUFTensor]:
    """Every tensor of the file under our names, Q/K rows un-permuted; blocks copied out of the mapping."""
    import gguf

    tensors: dict[str, GGUFTensor] = {}
    for t in gguf.GGUFReader(path).tensors:
        name = hf_name(t.name)
        if name is None:
            if t.name.split(".")[0] in IGNORED:
                continue
            raise ValueError(f"{path.name}: tensor {t.name} has no place in a Llama model")
        shape = tuple(int(n) for n in reversed(t.shape))  # ggml lists the input dim (ne0) first
        qtype = int(t.tensor_type)
        if qtype in BLOCK_BYTES and len(shape) == 2:
            data = torch.from_numpy(np.array(t.data, dtype=np.uint8)).reshape(shape[0], -1)  # (out, row bytes)
        else:
            data, qtype = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type))).reshape(shape), None
        if ".q_proj." in name or ".k_proj." in name:
            data = unpermute_rows(data, num_heads if ".q_proj." in name else num_kv_heads)
        tensors[name] = GGUFTensor(data, qtype)
    return tensors


def _set_dense(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    old = getattr(module, attr, None)
    if not isinstance(old, torch.Tensor) or old.shape != value.shape:
        raise ValueError(f"tensor {name} {tuple(value.shape)} does not fit the model")
    setattr(module, attr, nn.Parameter(value, requires_grad=False))


def load_gguf_weights(model: nn.Module, path: Path, dtype: torch.dtype, device: str) -> None:
    """Fill a LlamaForCausalLM built on meta from the GGUF file: blocks where the file has Q8_0/Q4_0/Q4_1
    (Linear and Embedding layers swapped), dense tensors in dtype elsewhere, all on device."""
    cfg = model.config
    tensors = read_tensors(Path(path), cfg.num_attention_heads, cfg.num_key_value_heads)
    if model.tied:
        tensors.pop("lm_head.weight", None)  # tied: the embedding serves, as in transformers
    kept: Counter[str] = Counter()
    consumed: set[str] = set()  # biases that went into a QuantLinear
    for name, t in tensors.items():
        if t.qtype is None:
            continue
        module_name = name.removesuffix(".weight")
        module, blocks = model.get_submodule(module_name), t.data.to(device)
        if blocks.shape[0] != module.weight.shape[0]:
            raise ValueError(f"tensor {name} has {blocks.shape[0]} rows, {module_name} {module.weight.shape[0]}")
        if isinstance(module, nn.Linear):
            bias = tensors.get(f"{module_name}.bias")
            consumed.add(f"{module_name}.bias")
            bias = None if bias is None else bias.data.to(device, dtype)
            swapped: nn.Module = QuantLinear(blocks, t.qtype, module.in_features, bias)
        elif isinstance(module, nn.Embedding):
            swapped = QuantEmbedding(blocks, t.qtype, module.embedding_dim, dtype)
        else:
            raise ValueError(f"tensor {name} is quantized, but {module_name} is a {type(module).__name__}")
        parent_name, _, attr = module_name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, swapped)
        kept[TYPE_NAMES[t.qtype]] += 1
    for name, t in tensors.items():
        if t.qtype is None and name not in consumed:
            _set_dense(model, name, t.data.to(device, dtype))
    _quantized_head(model)
    left = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta and "rotary" not in n]
    if left:
        raise ValueError(f"{Path(path).name} does not fill the model: missing {left[:5]}")
    nbytes = sum(b.numel() for n, b in model.named_buffers() if n.endswith("blocks") and not n.startswith("lm_head"))
    log.info("%s: %s kept as GGUF blocks (%.0f MiB)", Path(path).name, dict(kept), nbytes / 2**20)


def _quantized_head(model: nn.Module) -> None:
    """llama.py's logits() reads a dense .weight; a quantized head stands in for this instance's logits."""
    embed = model.model.embed_tokens
    if model.tied and isinstance(embed, QuantEmbedding):
        model.lm_head = embed.as_linear()  # the same blocks: no copy
    if isinstance(getattr(model, "lm_head", None), QuantLinear):
        model.logits = model.lm_head.forward  # (S, D) -> (S, V), the dense F.linear skipped
