import torch


def add_rms_norm(
    x: torch.Tensor,  # (T, D); res added to it in place when given
    res: torch.Tensor | None,  # (T, D) or None
    weight: torch.Tensor,  # (D,)
    eps: float,
) -> torch.Tensor:  # (T, D) weight * x / rms(x) in x's dtype, computed in fp32 as transformers' LlamaRMSNorm
    if res is not None:
        x.add_(res)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)
