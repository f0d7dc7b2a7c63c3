"""fp32 weights through the CPU matmul kernel (kernels/cpu/quant_matmul.c, its F32 type).

torch's GEMM reads a decode step's few rows of activations against each weight at well under the
machine's bandwidth (bench/results/profile_step_fp32.json: 12.8 GB/s of weights at one row); the C
kernel splits output rows across the threads and streams each weight row once for up to 4 rows of x.
The projections and the output head become QuantLinears over byte views of their own fp32 weights
(no copy); kernels.ops.quant_matmul hands steps with many rows back to torch's GEMM.
"""

import torch
from torch import nn

from server.model.quant import QuantLinear

F32 = 0  # ggml type: 32 plain floats per "block"


def _as_blocks(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().view(torch.uint8)  # (out, in * 4) uint8: the same memory


def serve_fp32_with_cpu_kernel(model: nn.Module) -> int:
    """Swap every dense fp32 Linear of the decoder layers and the output head; returns how many."""
    swapped = 0
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, module in list(parent.named_children()):
                if type(module) is nn.Linear and module.weight.dtype == torch.float32:
                    bias = None if module.bias is None else module.bias.detach()
                    setattr(parent, name, QuantLinear(_as_blocks(module.weight), F32, module.in_features, bias))
                    swapped += 1
    head = model.model.embed_tokens if model.tied else model.lm_head
    if isinstance(head, nn.Embedding | nn.Linear) and head.weight.dtype == torch.float32:
        model.lm_head = QuantLinear(_as_blocks(head.weight), F32, head.weight.shape[1])
        model.logits = model.lm_head.forward  # (S, D) -> (S, V)
        swapped += 1
    return swapped
