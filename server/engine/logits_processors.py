"""Batched logits transforms, one per sampling parameter, each over all rows at once (vLLM's formulas).

Every function takes logits (S, V) float32 and per-row parameters as (S,) tensors; rows that do not
use a parameter carry its neutral value (penalty 0 / 1, top_k V, top_p 1, min_p 0).
"""

import torch

NEG_INF = float("-inf")


def token_counts(token_lists: list[list[int]], vocab_size: int, device=None) -> torch.Tensor:
    """Per-row token lists -> counts (S, V) float32: how often each token occurs in each row's list."""
    S = len(token_lists)
    counts = torch.zeros(S, vocab_size, dtype=torch.float32, device=device)  # (S, V)
    lens = torch.tensor([len(t) for t in token_lists], dtype=torch.int64)
    if int(lens.sum()) == 0:
        return counts
    rows = torch.repeat_interleave(torch.arange(S), lens).to(device)  # (N,)
    ids = torch.tensor([t for ts in token_lists for t in ts], dtype=torch.int64, device=device)  # (N,)
    counts.index_put_((rows, ids), torch.ones_like(ids, dtype=torch.float32), accumulate=True)
    return counts


def apply_penalties(
    logits: torch.Tensor,  # (S, V)
    prompt_mask: torch.Tensor,  # (S, V) bool, token occurs in the prompt
    output_counts: torch.Tensor,  # (S, V) float32, occurrences in the output so far
    presence: torch.Tensor,  # (S,)
    frequency: torch.Tensor,  # (S,)
    repetition: torch.Tensor,  # (S,)
) -> torch.Tensor:
    """Repetition over prompt + output (divide positive logits, multiply negative ones), then OpenAI's
    frequency and presence penalties over the output only."""
    output_mask = output_counts > 0  # (S, V)
    penalty = torch.where(prompt_mask | output_mask, repetition[:, None], 1.0)  # (S, V)
    logits = logits * torch.where(logits > 0, 1.0 / penalty, penalty)
    logits = logits - frequency[:, None] * output_counts
    return logits - presence[:, None] * output_mask


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p (S,) times the row's top probability."""
    probs = logits.softmax(-1)  # (S, V)
    return logits.masked_fill(probs < probs.amax(-1, keepdim=True) * min_p[:, None], NEG_INF)


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None) -> torch.Tensor:
    """Keep each row's top_k (S,) int64 best tokens (ties kept), then the smallest set reaching top_p (S,)."""
    ascending, order = logits.sort(dim=-1)  # (S, V)
    if top_k is not None:
        kth = ascending.gather(1, (logits.shape[1] - top_k).clamp(min=0)[:, None])  # (S, 1)
        ascending = ascending.masked_fill(ascending < kth, NEG_INF)
    if top_p is not None:
        cum = ascending.softmax(-1).cumsum(-1)  # (S, V)
        drop = (cum <= 1 - top_p[:, None]) & (top_p < 1)[:, None]  # rows at 1 keep even underflowed tokens
        drop[:, -1] = False  # the best token always stays
        ascending = ascending.masked_fill(drop, NEG_INF)
    return torch.empty_like(logits).scatter_(1, order, ascending)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """probs (S, V), u (S,) uniform in [0, 1) -> (S,) int64: the token where each row's CDF passes u."""
    cdf = probs.double().cumsum(-1)  # (S, V) float64: a float32 sum over the vocabulary drifts
    x = (u.double() * cdf[:, -1])[:, None]  # (S, 1)
    idx = torch.searchsorted(cdf, x, right=True).squeeze(1)  # (S,) first index with cdf > x
    return idx.clamp_(max=probs.shape[1] - 1)
