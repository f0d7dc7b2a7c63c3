"""Next-token choice for a batch of rows, each with its own parameters and, if seeded, its own generator.

Each transform runs once over the rows that use it, never row by row over the vocabulary. Order as
vLLM: min_tokens mask and logit_bias, penalties (on the (row, token) pairs that occur), then greedy
argmax or temperature -> min_p -> top-k -> top-p (on each row's best candidates: a partial sort) ->
a draw. Each row draws one uniform number per step from its own generator (or the engine's), so a
seeded row's tokens do not depend on which rows share its batch. Logprobs are the model's own
distribution (before any transform), as vLLM reports them by default.
"""

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from server.engine import logits_processors as lp
from server.engine.outputs import TokenLogprob
from server.engine.sampling_params import SamplingParams


@dataclass(slots=True)
class SampleRow:
    params: SamplingParams
    generator: torch.Generator | None  # the sequence's own, when seeded
    prompt_ids: Sequence[int] = ()  # read by repetition_penalty
    output_ids: Sequence[int] = ()  # read by the penalties and min_tokens


def _column(rows: list[SampleRow], idx: list[int], get) -> torch.Tensor:
    return torch.tensor([float(get(rows[i].params)) for i in idx], dtype=torch.float32)  # (R,)


def _rows_where(rows: list[SampleRow], pred) -> list[int]:
    return [i for i, r in enumerate(rows) if pred(r)]


def _stop_masks(logits: torch.Tensor, rows: list[SampleRow], eos_ids: Collection[int]) -> None:
    """In place. min_tokens: end-of-sequence and stop_token_ids cannot be drawn yet; logit_bias: added."""
    ban_rows, ban_ids, bias_rows, bias_ids, bias_vals = [], [], [], [], []
    for i, r in enumerate(rows):
        p = r.params
        if len(r.output_ids) < p.min_tokens:
            stops = set(p.stop_token_ids) | (set() if p.ignore_eos else set(eos_ids))
            ban_rows += [i] * len(stops)
            ban_ids += stops
        if p.logit_bias:
            bias_rows += [i] * len(p.logit_bias)
            bias_ids += p.logit_bias.keys()
            bias_vals += p.logit_bias.values()
    if bias_rows:
        logits.index_put_((torch.tensor(bias_rows), torch.tensor(bias_ids)),
                          torch.tensor(bias_vals, dtype=logits.dtype), accumulate=True)
    if ban_rows:
        logits.index_put_((torch.tensor(ban_rows), torch.tensor(ban_ids)), torch.tensor(lp.NEG_INF))


def _penalize(logits: torch.Tensor, rows: list[SampleRow]) -> None:
    """In place, on the penalized rows' (row, token) pairs only."""
    idx = _rows_where(rows, lambda r: r.params.penalized)
    if idx:
        lp.apply_penalties(
            logits, torch.tensor(idx), [list(rows[i].prompt_ids) for i in idx],
            [list(rows[i].output_ids) for i in idx], _column(rows, idx, lambda p: p.presence_penalty),
            _column(rows, idx, lambda p: p.frequency_penalty), _column(rows, idx, lambda p: p.repetition_penalty),
        )


def _scaled(logits: torch.Tensor, rows: list[SampleRow]) -> tuple[torch.Tensor, ...]:
    """logits / temperature (R, V) and the rows' min_p, top_k (V = off) and top_p, as (R,) tensors."""
    temp = torch.tensor([r.params.temperature for r in rows], dtype=torch.float32)
    V = logits.shape[1]
    return (
        logits / temp[:, None],
        torch.tensor([r.params.min_p for r in rows], dtype=torch.float32),
        torch.tensor([r.params.top_k or V for r in rows]),
        torch.tensor([r.params.top_p for r in rows], dtype=torch.float32),
    )


def warp(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    """The random rows' processed logits (R, V) -> what they draw from: temperature, min_p, top-k, top-p."""
    return lp.apply_min_p_top_k_top_p(*_scaled(logits, rows))


def _processed(p: SamplingParams) -> bool:
    return bool(p.logit_bias or p.min_tokens or p.penalized)


def argmax_only(params: SamplingParams) -> bool:
    """Whether a row's token is the argmax of its raw logits and nothing else is read from them."""
    return params.greedy and params.logprobs is None and not _processed(params)


def process(logits: torch.Tensor, rows: list[SampleRow], eos_ids: Collection[int] = ()) -> torch.Tensor:
    """Raw logits (S, V) -> what greedy rows take the argmax of: min_tokens mask, logit_bias, penalties."""
    if not any(_processed(r.params) for r in rows):
        return logits
    logits = logits.clone()
    _stop_masks(logits, rows, eos_ids)
    _penalize(logits, rows)
    return logits


def _draw(
    logits: torch.Tensor,  # (R, V) the random rows' processed logits
    rows: list[SampleRow],
    default_generator: torch.Generator,
) -> torch.Tensor:
    """(R,) int64 tokens; rows whose distribution is not finite take the argmax."""
    u = torch.empty(len(rows), dtype=torch.float64)
    free = [j for j, r in enumerate(rows) if r.generator is None]
    if free:
        u[free] = torch.rand(len(free), generator=default_generator, dtype=torch.float64)
    for j, r in enumerate(rows):
        if r.generator is not None:  # one number per seeded row, from its own stream
            u[j] = torch.rand(1, generator=r.generator, dtype=torch.float64)
    tokens = torch.empty(len(rows), dtype=torch.int64)
    for g in lp.min_p_top_k_top_p(*_scaled(logits, rows)):  # a few groups (levels, whole rows), not rows
        if not len(g.rows):
            continue
        probs = g.logits.softmax(-1)  # (n, W)
        col = lp.inverse_cdf(probs, u[g.rows])
        # a NaN anywhere makes the row's sum NaN; a token of probability 0 is float rounding at the CDF's end
        bad = ~torch.isfinite(probs.sum(-1)) | (probs.gather(1, col[:, None]).squeeze(1) <= 0)
        if bad.any():
            col[bad] = g.logits[bad].argmax(-1)
        tokens[g.rows] = col if g.ids is None else g.ids.gather(1, col[:, None]).squeeze(1)
    return tokens


def _logprobs(raw: torch.Tensor, rows: list[SampleRow], tokens: list[int]) -> list[TokenLogprob | None]:
    out: list[TokenLogprob | None] = [None] * len(rows)
    wanted = _rows_where(rows, lambda r: r.params.logprobs is not None)
    if not wanted:
        return out
    logp = torch.log_softmax(raw[wanted], dim=-1)  # (W, V), the model's own distribution
    k = max(rows[i].params.logprobs for i in wanted)
    top_vals, top_ids = logp.topk(max(k, 1), dim=-1)  # (W, k)
    chosen = logp.gather(1, torch.tensor([tokens[i] for i in wanted])[:, None]).squeeze(1).tolist()  # (W,)
    top_ids, top_vals = top_ids.tolist(), top_vals.tolist()
    for j, i in enumerate(wanted):
        kk = rows[i].params.logprobs
        out[i] = TokenLogprob(tokens[i], chosen[j], list(zip(top_ids[j][:kk], top_vals[j][:kk], strict=True)))
    return out


def sample(
    logits: torch.Tensor,  # (S, V)
    rows: list[SampleRow],
    default_generator: torch.Generator,
    eos_ids: Collection[int] = (),
) -> tuple[list[int], list[TokenLogprob | None]]:
    assert logits.dim() == 2 and logits.shape[0] == len(rows)
    raw = logits.float()
    logits = process(raw, rows, eos_ids)  # (S, V)
    rand = _rows_where(rows, lambda r: not r.params.greedy)
    if not rand:
        tokens = logits.argmax(-1)  # (S,)
    else:
        tokens = torch.zeros(len(rows), dtype=torch.int64)
        greedy = _rows_where(rows, lambda r: r.params.greedy)
        if greedy:
            tokens[greedy] = logits[greedy].argmax(-1)
        sub = logits if len(rand) == len(rows) else logits[rand]  # (R, V)
        tokens[rand] = _draw(sub, [rows[i] for i in rand], default_generator)
    chosen = tokens.tolist()
    return chosen, _logprobs(raw, rows, chosen)
