"""The RMSNorm gains in front of each projection: what per-token Arrow's proxy inputs (router/arrow_token.py) read."""

import torch
from torch import nn


def projection_norm_gains(model: nn.Module) -> tuple[dict[tuple[int, str], torch.Tensor], float]:
    """(layer, module) -> (D,) gain of the norm before q/k/v (input_layernorm) and gate/up
    (post_attention_layernorm), and the norms' eps."""
    gains, eps = {}, 0.0
    for i, layer in enumerate(model.model.layers):
        for names, norm in ((("q_proj", "k_proj", "v_proj"), layer.input_layernorm),
                            (("gate_proj", "up_proj"), layer.post_attention_layernorm)):
            gains.update({(i, n): norm.weight.detach() for n in names})
            eps = norm.eps
    return gains, eps
