"""Batched logits transforms, one per sampling parameter, each over all rows at once (vLLM's formulas).

Every function takes logits (S, V) float32 and per-row parameters as (S,) tensors; rows that do not
use a parameter carry its neutral value (penalty 0 / 1, top_k V, top_p 1, min_p 0).
"""

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


def apply_penalties(
    logits: torch.Tensor,  # (S, V), changed in place
    rows: torch.Tensor,  # (R,) int64, the penalized rows
    prompt_ids: list[list[int]],  # per penalized row
    output_ids: list[list[int]],  # per penalized row
    presence: torch.Tensor,  # (R,)
    frequency: torch.Tensor,  # (R,)
    repetition: torch.Tensor,  # (R,)
) -> None:
    """Repetition over prompt + output (divide positive logits, multiply negative ones), then OpenAI's
    frequency and presence penalties over the output only. Only the (row, token) pairs that occur
    change, so the work is the rows' token counts, not R x V."""
    V = logits.shape[1]
    R = len(rows)
    n_p = torch.tensor([len(t) for t in prompt_ids], dtype=torch.int64)
    n_o = torch.tensor([len(t) for t in output_ids], dtype=torch.int64)
    local = torch.cat([torch.repeat_interleave(torch.arange(R), n_p), torch.repeat_interleave(torch.arange(R), n_o)])
    ids = torch.tensor([t for ts in prompt_ids for t in ts] + [t for ts in output_ids for t in ts], dtype=torch.int64)
    if ids.numel() == 0:
        return
    pairs, which = torch.unique(local * V + ids, return_inverse=True)  # (N,) each (row, token) once
    counts = torch.bincount(which[int(n_p.sum()):], minlength=len(pairs)).float()  # (N,) occurrences in the output
    r, t = pairs // V, pairs % V  # (N,)
    x = logits[rows[r], t]  # (N,)
    x = torch.where(x > 0, x / repetition[r], x * repetition[r])
    logits[rows[r], t] = x - frequency[r] * counts - presence[r] * (counts > 0).float()


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p (S,) times the row's top probability."""
    probs = logits.softmax(-1)  # (S, V)
    return logits.masked_fill(probs < probs.amax(-1, keepdim=True) * min_p[:, None], NEG_INF)


LEVELS = (128, 1024)  # candidates tried in turn: each row is filtered on its best 128, else 1024, else a full sort


@dataclass(slots=True)
class Kept:
    """Some rows' logits after min_p / top-k / top-p."""

    rows: torch.Tensor  # (n,) int64, which rows of the batch
    logits: torch.Tensor  # (n, W) float, -inf where dropped
    ids: torch.Tensor | None  # (n, W) int64 token of each column, ascending; None: the columns are the vocabulary


def min_p_top_k_top_p(
    logits: torch.Tensor,  # (S, V), after temperature
    min_p: torch.Tensor,  # (S,) float, 0 = off
    top_k: torch.Tensor,  # (S,) int64, V = off
    top_p: torch.Tensor,  # (S,) float, 1 = off
) -> list[Kept]:
    """min_p, then each row's top_k best tokens (ties kept), then the smallest set reaching top_p; every row
    once, in groups. A row whose kept set closes within its best LEVELS[i] tokens comes back as those
    candidates (a partial sort, no (S, V) output); which level serves a row depends on that row alone, so
    its result does not depend on the batch. Rows that filter nothing come back whole."""
    S, V = logits.shape
    filters = (min_p > 0) | (top_k < V) | (top_p < 1)
    groups, pending = [], filters.nonzero().squeeze(1)  # (R,) rows that filter at all
    if not filters.all():
        whole = (~filters).nonzero().squeeze(1)
        groups.append(Kept(whole, logits[whole], None))
    for C in LEVELS:
        if C >= V or not len(pending):
            break
        rows = logits if len(pending) == S else logits[pending]  # (R, V)
        closed, vals, ids = _on_candidates(rows, min_p[pending], top_k[pending], top_p[pending], C)
        ids, order = ids.sort(-1)  # by token id: a draw then reads the CDF in the vocabulary's order
        groups.append(Kept(pending[closed], vals.gather(1, order), ids))
        pending = pending[~closed]
    if len(pending):
        x = apply_min_p(logits[pending], min_p[pending])
        groups.append(Kept(pending, _top_k_top_p_sorted(x, top_k[pending], top_p[pending]), None))
    return groups


def apply_min_p_top_k_top_p(logits: torch.Tensor, min_p: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                            ) -> torch.Tensor:
    """The same as (S, V) logits, -inf where dropped."""
    out = torch.full_like(logits, NEG_INF)
    for g in min_p_top_k_top_p(logits, min_p, top_k, top_p):
        if g.ids is None:
            out[g.rows] = g.logits
        else:
            out[g.rows] = torch.full((len(g.rows), logits.shape[1]), NEG_INF).scatter_(1, g.ids, g.logits)
    return out


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None) -> torch.Tensor:
    S, V = logits.shape
    k = top_k if top_k is not None else torch.full((S,), V, dtype=torch.int64)
    p = top_p if top_p is not None else torch.ones(S)
    return apply_min_p_top_k_top_p(logits, torch.zeros(S), k, p)


def _on_candidates(logits: torch.Tensor, min_p: torch.Tensor, k: torch.Tensor, p: torch.Tensor, C: int,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows (R, V) filtered on their best C tokens -> closed (R,) bool; the closed rows' candidates (F, C), -inf
    where dropped, and their token ids (F, C)."""
    vals, idx = logits.topk(C, dim=-1)  # (R, C) best first
    lse_all = vals[:, 0] + (logits - vals[:, :1]).exp_().sum(-1).log()  # (R,) the row's max is its best candidate
    in_min_p = (vals - lse_all[:, None]).exp() >= min_p[:, None] * (vals[:, :1] - lse_all[:, None]).exp()
    min_p_closed = ~in_min_p[:, -1]  # the C-th is out already: so is everything past it
    k_in = k < C  # the (k+1)th candidate shows whether kth's ties go on past the candidates
    kth = torch.where(k_in, vals.gather(1, (k.clamp(max=C) - 1)[:, None]).squeeze(1), NEG_INF)  # (R,)
    base = in_min_p & (vals >= kth[:, None])  # (R, C) min_p and top_k: both keep a prefix
    base_closed = min_p_closed | (k_in & (vals[:, -1] < kth))
    lse = torch.logsumexp(vals.masked_fill(~base, NEG_INF), -1)  # (R,)
    if not base_closed.all():  # base runs past the candidates: normalize over all of it
        beyond = torch.logsumexp(apply_min_p(logits, min_p), -1) if (min_p > 0).any() else lse_all
        lse = torch.where(base_closed, lse, beyond)
    probs = (vals - lse[:, None]).exp().masked_fill(~base, 0)  # (R, C) under the min_p / top-k filtered law
    cum = probs.cumsum(-1)
    keep = base & (((cum - probs) < p[:, None]) | (p >= 1)[:, None])  # the smallest prefix reaching top_p
    keep[:, 0] = True
    closed = base_closed | ((p < 1) & (cum[:, -1] >= p))
    return closed, vals[closed].masked_fill(~keep[closed], NEG_INF), idx[closed]


def _top_k_top_p_sorted(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The same filter over a full sort of each row (R, V)."""
    ascending, order = logits.sort(dim=-1)  # (R, V)
    kth = ascending.gather(1, (logits.shape[1] - top_k).clamp(min=0)[:, None])  # (R, 1)
    ascending = ascending.masked_fill(ascending < kth, NEG_INF)
    cum = ascending.softmax(-1).cumsum(-1)  # (R, V)
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
