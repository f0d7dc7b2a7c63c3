"""Token masks for the constrained rows of a step: computed on a worker thread while the forward runs
(xgrammar releases the GIL), joined and applied in one op before sampling. Other rows are untouched."""

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from server.structured.grammar import GrammarState

# finite, so a logprob of a masked token still serialises; exp() of it is exactly 0 in float32
MASKED = -1e30
_worker = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")


@dataclass(slots=True)
class PendingMasks:
    rows: list[int]  # rows of the step's logits that are constrained
    bitmask: torch.Tensor  # (len(rows), ceil(V / 32)) int32, bit set = allowed
    done: Future
    fill_s: float = 0.0  # seconds the worker spent filling (set when done), for benchmarks


def start_masks(states: list[GrammarState | None]) -> PendingMasks | None:
    """Start filling masks for the rows whose state is not None; None when no row is constrained."""
    rows = [i for i, s in enumerate(states) if s is not None]
    if not rows:
        return None
    vocab_size = states[rows[0]].vocab_size
    bitmask = torch.zeros(len(rows), (vocab_size + 31) // 32, dtype=torch.int32)  # (R, W)

    def fill() -> None:
        t0 = time.perf_counter()
        for j, i in enumerate(rows):
            states[i].fill(bitmask, j)
        pending.fill_s = time.perf_counter() - t0

    pending = PendingMasks(rows, bitmask, Future())
    pending.done = _worker.submit(fill)
    return pending


_BITS = torch.arange(32, dtype=torch.int32)


def apply_masks(logits: torch.Tensor, pending: PendingMasks | None) -> torch.Tensor:
    """logits (S, V) float32 on CPU, masked in place in the constrained rows only; returns logits."""
    if pending is None:
        return logits
    pending.done.result()
    S, V = logits.shape
    R = len(pending.rows)
    allowed = ((pending.bitmask.unsqueeze(-1) >> _BITS) & 1).view(R, -1)[:, :V].bool()  # (R, V)
    if allowed.shape[1] < V:  # logits wider than the grammar's vocabulary: the extra ids are never allowed
        allowed = torch.nn.functional.pad(allowed, (0, V - allowed.shape[1]), value=False)
    idx = torch.tensor(pending.rows, dtype=torch.int64)  # (R,)
    logits[idx] = logits[idx].masked_fill(~allowed, MASKED)  # (R, V)
    return logits
