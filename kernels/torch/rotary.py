import torch


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def rotary_(
    q: torch.Tensor,  # (T, H, hd), rotated in place
    k: torch.Tensor,  # (T, KH, hd), rotated in place
    cos: torch.Tensor,  # (T, hd)
    sin: torch.Tensor,  # (T, hd)
) -> None:
    """x * cos + rotate_half(x) * sin, as transformers' apply_rotary_pos_emb, written back into q and k."""
    q.copy_(_rotate(q, cos, sin))
    k.copy_(_rotate(k, cos, sin))
