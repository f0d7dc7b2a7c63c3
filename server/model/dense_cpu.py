"""Dense weights through the CPU matmul kernel (kernels/cpu/quant_matmul.c, its F32 and BF16 types).

torch's GEMM reads a decode step's few rows of activations against each weight at well under the
machine's bandwidth (bench/results/profile_step_fp32.json: 12.8 GB/s of weights at one row); the C
kernel splits output rows across the threads and streams each weight row once for up to 4 rows of x.
fp32: the projections and the output head become QuantLinears over byte views of their own weights (no
copy); kernels.ops.quant_matmul hands steps of more than 128 rows back to torch's GEMM. bf16 (`--weights bf16`):
the projections, the embedding and the head are rounded to bfloat16 once (half the bytes per step) and
every matmul accumulates in fp32 on the exact widened values; norms stay fp32. fp32 greedy rows take their
argmax through server/model/screened_head.py (exact, from a Q8_0 copy: a quarter of the head's bytes).
"""

import os

import torch
from torch import nn

from server.model.quant import QuantEmbedding, QuantLinear
from server.model.screened_head import ScreenedHead

F32, BF16 = 0, 30  # ggml types: 32 plain floats / bfloat16s per "block"
_DTYPES = {F32: torch.float32, BF16: torch.bfloat16}


def _as_blocks(weight: torch.Tensor, qtype: int) -> torch.Tensor:
    # (out, in * bytes) uint8: the same memory for F32, a rounded half-size copy for BF16
    return weight.detach().to(_DTYPES[qtype]).contiguous().view(torch.uint8)


def serve_with_cpu_kernel(model: nn.Module, qtype: int = F32) -> int:
    """Swap every dense fp32 Linear of the decoder layers and the output head (and, for BF16, the embedding);
    returns how many modules were swapped."""
    swapped = 0
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, module in list(parent.named_children()):
                if type(module) is nn.Linear and module.weight.dtype == torch.float32:
                    bias = None if module.bias is None else module.bias.detach()
                    blocks = _as_blocks(module.weight, qtype)
                    setattr(parent, name, QuantLinear(blocks, qtype, module.in_features, bias))
                    swapped += 1
    embed = model.model.embed_tokens
    if qtype == BF16 and isinstance(embed, nn.Embedding):
        model.model.embed_tokens = embed = QuantEmbedding(_as_blocks(embed.weight, qtype), qtype, embed.embedding_dim,
                                                          torch.float32)
        swapped += 1
    if model.tied and isinstance(embed, QuantEmbedding):
        model.lm_head = embed.as_linear()  # the same blocks
    else:
        head = embed if model.tied else model.lm_head
        if not isinstance(head, nn.Embedding | nn.Linear) or head.weight.dtype != torch.float32:
            return swapped
        model.lm_head = QuantLinear(_as_blocks(head.weight, qtype), qtype, head.weight.shape[1])
    model.logits = model.lm_head.forward  # (S, D) -> (S, V)
    if model.lm_head.qtype == F32 and os.environ.get("LORAPLEX_GREEDY_SCREEN") != "off":  # off: the full head
        model.greedy_tokens = ScreenedHead(model.lm_head.blocks, model.lm_head.in_features, model.logits).argmax
    return swapped + 1
