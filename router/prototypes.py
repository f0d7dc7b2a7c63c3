"""Arrow prototypes: the top right singular vector of each LoRA delta B @ A, without forming B @ A.

With A^T = Q R (Q (in, r) orthonormal), B @ A = (B R^T) Q^T; the SVD of the small (out, r) matrix
B R^T = U S W^T gives B @ A = U S (Q W)^T, so the right singular vectors of the delta are Q W.
Cost O((in + out) r^2) per module instead of O(in * out * r).
"""

import torch


def top_right_singular_vector(
    a: torch.Tensor,  # (r, in), LoRA A
    b: torch.Tensor,  # (out, r), LoRA B
) -> tuple[torch.Tensor, float]:  # (v (in,) unit norm, top singular value)
    assert a.dim() == 2 and b.dim() == 2 and a.shape[0] == b.shape[1], (a.shape, b.shape)
    a, b = a.double(), b.double()
    q, r = torch.linalg.qr(a.T)  # q (in, r), r (r, r)
    _, s, wh = torch.linalg.svd(b @ r.T, full_matrices=False)  # (out, r) -> s (r,), wh (r, r)
    v = q @ wh[0]  # (in,)
    return (v / v.norm()).float(), float(s[0])


def adapter_prototypes(
    a: dict[tuple[int, str], torch.Tensor],  # (layer, module) -> A (r, in)
    b: dict[tuple[int, str], torch.Tensor],  # (layer, module) -> B (out, r)
) -> dict[tuple[int, str], torch.Tensor]:
    """One unit prototype (in,) per targeted (layer, module), computed once when an adapter registers."""
    return {key: top_right_singular_vector(a[key], b[key])[0] for key in a}
