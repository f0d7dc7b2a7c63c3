import torch
import torch.nn.functional as F


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # (T, I) each -> (T, I)
    """The MLP's activation, as transformers' LlamaMLP computes it."""
    return F.silu(gate) * up
