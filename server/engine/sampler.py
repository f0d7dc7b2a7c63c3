"""Next-token choice for a batch of rows, each with its own parameters and, if seeded, its own generator."""

from dataclasses import dataclass

import torch

from server.engine.outputs import TokenLogprob
from server.engine.sampling_params import SamplingParams


@dataclass(slots=True)
class SampleRow:
    params: SamplingParams
    generator: torch.Generator | None  # the sequence's own, when seeded


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """logits (V,) -> logits with everything outside top-k / top-p set to -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def sample(
    logits: torch.Tensor,  # (S, V) float32
    rows: list[SampleRow],
    default_generator: torch.Generator,
) -> tuple[list[int], list[TokenLogprob | None]]:
    assert logits.dim() == 2 and logits.shape[0] == len(rows)
    logits = logits.float()
    tokens = logits.argmax(-1).tolist()  # greedy rows keep these
    for i, row in enumerate(rows):
        p = row.params
        if p.greedy:
            continue
        row_logits = _filter(logits[i] / p.temperature, p.top_k, p.top_p)
        probs = row_logits.softmax(-1)
        if not torch.isfinite(probs).all():  # non-finite logits: fall back to the greedy choice
            continue
        tokens[i] = int(torch.multinomial(probs, 1, generator=row.generator or default_generator))
    logprobs: list[TokenLogprob | None] = [None] * len(rows)
    wanted = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    if wanted:
        lp = torch.log_softmax(logits[wanted], dim=-1)  # (W, V), the model's own distribution
        k = max(rows[i].params.logprobs for i in wanted)
        top_vals, top_ids = lp.topk(max(k, 1), dim=-1)
        for j, i in enumerate(wanted):
            kk = rows[i].params.logprobs
            top = list(zip(top_ids[j, :kk].tolist(), top_vals[j, :kk].tolist(), strict=True))
            logprobs[i] = TokenLogprob(tokens[i], float(lp[j, tokens[i]]), top)
    return tokens, logprobs
