"""Greedy tokens from an fp32 output head at a quarter of its bytes, exactly: a Q8_0 copy of the head screens
the vocabulary, and only the tokens the screen cannot rule out are scored on the fp32 rows.

At one row the head is a fifth of a step's weight bytes (SmolLM2: 113 of 540 MB) and the step streams them at
the memory's speed. Token v's fp32 logit and its screened logit differ by at most
|x| (|w_v - q_v| + gamma_(K+1) (|w_v| + |q_v|)) (Cauchy-Schwarz on the rounding of the copy q_v, measured per
row; gamma for the float32 sums of either matmul, in any order), so v can be the argmax only if its screened
logit plus its bound reaches the best screened logit minus that token's bound. The candidates are scored by the
same fp32 kernel on the same rows of x: the token chosen is the full head's argmax (first index among ties, as
torch's argmax). Steps whose screen is not finite take the full head.
"""

from collections.abc import Callable

import gguf
import torch

from kernels import ops
from kernels.cpu.quant_matmul import GEMV_MAX_ROWS
from kernels.torch.quant_matmul import F32, Q8_0, dequantize

MAX_ROWS = GEMV_MAX_ROWS  # the rows the kernel streams; more are bound by arithmetic, which the screen leaves whole
TINY = 2.0**-100  # covers underflowed products: K * 2^-149 each matmul


def row_bounds(weight: torch.Tensor, screen: torch.Tensor) -> torch.Tensor:
    """(V,) float32 r_v with |fp32 x.w_v - fp32 x.q_v| <= |x| r_v + TINY, q_v the screen's dequantized row."""
    k = weight.shape[1]
    gamma = (k + 1) * 2.0**-24 / (1 - (k + 1) * 2.0**-24)
    out = torch.empty(weight.shape[0])
    for i in range(0, weight.shape[0], 4096):  # in slices: float64 copies of a whole head would be large
        w, q = weight[i : i + 4096].double(), dequantize(screen[i : i + 4096], Q8_0).double()  # (n, K) each
        r = (w - q).norm(dim=1) + gamma * (w.norm(dim=1) + q.norm(dim=1))  # (n,)
        out[i : i + 4096] = r * 1.01  # the margin covers the bound's own float32 arithmetic
    return out


class ScreenedHead:
    def __init__(self, blocks: torch.Tensor, in_features: int, logits: Callable[[torch.Tensor], torch.Tensor]):
        """blocks: the head's F32 rows (V, in * 4) uint8, as the QuantLinear serving it holds them; logits: the
        full head, for steps the screen does not take."""
        weight = blocks.view(torch.float32)  # (V, in)
        assert weight.dim() == 2 and weight.shape[1] == in_features and in_features % 32 == 0
        self.exact, self.logits = blocks, logits
        quantized = gguf.quants.quantize(weight.numpy(), gguf.GGMLQuantizationType.Q8_0)
        self.screen = torch.from_numpy(quantized.copy())  # (V, in / 32 * 34) uint8
        self.row_bound = row_bounds(weight, self.screen)  # (V,)

    def candidates(self, h: torch.Tensor) -> torch.Tensor | None:
        """(S, V) bool: the tokens each row's argmax may be; None when the screen is not finite."""
        approx = ops.quant_matmul(h, self.screen, Q8_0)  # (S, V)
        if not torch.isfinite(approx.sum()):  # an overflowing sum of finite logits only costs the full head
            return None
        bound = h.double().norm(dim=1, keepdim=True).float() * self.row_bound + TINY  # (S, V)
        bound += (approx.abs() + bound) * 2.0**-20  # the float32 sums below: a few ulps of |approx| + bound
        floor = (approx - bound).amax(dim=1, keepdim=True)  # (S, 1)
        return approx + bound >= floor

    def argmax(self, h: torch.Tensor) -> torch.Tensor:  # (S, in) float32 -> (S,) int64
        if h.shape[0] > MAX_ROWS or h.dtype != torch.float32:
            return self.logits(h).argmax(-1)
        cand = self.candidates(h)
        if cand is None:
            return self.logits(h).argmax(-1)
        ids = cand.any(dim=0).nonzero().flatten()  # (U,) ascending: the rows' candidates together
        exact = ops.quant_matmul(h, self.exact.index_select(0, ids), F32)  # (S, U), the full head's numbers
        return ids[exact.masked_fill(~cand[:, ids], float("-inf")).argmax(-1)]
