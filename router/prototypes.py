"""Arrow prototypes: the top right singular vector of each LoRA delta B @ A, without forming B @ A.

With A^T = Q R (Q (in, r) orthonormal), B @ A = (B R^T) Q^T; the SVD of the small (out, r) matrix
B R^T = U S W^T gives B @ A = U S (Q W)^T, so the right singular vectors of the delta are Q W
(W, S from the eigen-decomposition of the r x r matrix (B R^T)^T (B R^T)).
Cost O((in + out) r^2) per module instead of O(in * out * r).
"""

from collections import defaultdict

import torch


def top_right_singular_vectors(
    a: torch.Tensor,  # (n, r, in), LoRA A of n modules of one shape
    b: torch.Tensor,  # (n, out, r), LoRA B
) -> tuple[torch.Tensor, torch.Tensor]:  # (v (n, in) unit norm, top singular values (n,))
    assert a.dim() == 3 and b.dim() == 3 and a.shape[:2] == (b.shape[0], b.shape[2]), (a.shape, b.shape)
    a, b = a.double(), b.double()
    q, r = torch.linalg.qr(a.transpose(1, 2))  # q (n, in, r), r (n, r, r)
    m = b @ r.transpose(1, 2)  # (n, out, r)
    # W and S of m's SVD from its (r, r) Gram matrix: an SVD of the tall m costs ~10x more
    evals, evecs = torch.linalg.eigh(m.transpose(1, 2) @ m)  # (n, r), (n, r, r), ascending
    v = q @ evecs[:, :, -1:]  # (n, in, 1)
    v = v[..., 0] / v[..., 0].norm(dim=1, keepdim=True)
    return v.float(), evals[:, -1].clamp(min=0).sqrt().float()


def top_right_singular_vector(
    a: torch.Tensor,  # (r, in), LoRA A
    b: torch.Tensor,  # (out, r), LoRA B
) -> tuple[torch.Tensor, float]:  # (v (in,) unit norm, top singular value)
    v, s = top_right_singular_vectors(a[None], b[None])
    return v[0], float(s[0])


def adapter_prototypes(
    a: dict[tuple[int, str], torch.Tensor],  # (layer, module) -> A (r, in)
    b: dict[tuple[int, str], torch.Tensor],  # (layer, module) -> B (out, r)
) -> dict[tuple[int, str], torch.Tensor]:
    """One unit prototype (in,) per targeted (layer, module), computed once when an adapter registers.

    Modules of one shape go through one batched QR and SVD: hundreds of tiny factorisations one by
    one cost more in call overhead (and OpenMP wake-ups) than in arithmetic.
    """
    by_shape: dict[tuple, list] = defaultdict(list)
    for key in a:
        by_shape[a[key].shape, b[key].shape].append(key)
    out = {}
    for keys in by_shape.values():
        v, _ = top_right_singular_vectors(torch.stack([a[k] for k in keys]), torch.stack([b[k] for k in keys]))
        out.update(zip(keys, v, strict=True))
    return out
