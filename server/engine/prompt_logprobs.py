"""Prompt logprobs from a prefill chunk's hidden states, a block of positions at a time.

Only the needed values leave each block (the next prompt token's logprob and the top k): the
full-vocabulary logits of a block are dropped before the next, so a long prompt never holds
(prompt length, V) logits at once.
"""

from collections.abc import Callable

import torch

from server.engine.outputs import TokenLogprob

BLOCK = 256  # positions per log_softmax: 256 x 49152 float32 is 48 MiB


def prompt_logprobs(
    hidden: torch.Tensor,  # (T, D) the step's final hidden states, packed
    logits: Callable[[torch.Tensor], torch.Tensor],  # (b, D) -> (b, V)
    first_row: int,  # packed row of the first position to score
    targets: list[int],  # the prompt token each scored position predicts (position p -> token p + 1)
    k: int,  # top logprobs per position
    block: int = BLOCK,
) -> list[TokenLogprob]:
    out: list[TokenLogprob] = []
    for s in range(0, len(targets), block):
        tgt = torch.tensor(targets[s : s + block], device=hidden.device)  # (b,)
        rows = hidden[first_row + s : first_row + s + len(tgt)]  # (b, D)
        logp = torch.log_softmax(logits(rows).float(), dim=-1)  # (b, V)
        chosen_t = logp.gather(1, tgt[:, None])  # (b, 1)
        ranks = ((logp > chosen_t).sum(-1) + 1).tolist()  # (b,)
        chosen = chosen_t.squeeze(1).tolist()
        if k:
            top_vals, top_ids = (t.tolist() for t in logp.topk(k, dim=-1))  # (b, k)
        else:
            top_vals = top_ids = [[] for _ in chosen]
        out += [
            TokenLogprob(t, c, list(zip(ids, vals, strict=True)), r)
            for t, c, ids, vals, r in zip(tgt.tolist(), chosen, top_ids, top_vals, ranks, strict=True)
        ]
    return out
