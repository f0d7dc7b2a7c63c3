"""Rows routed per token by Arrow: which candidate adapter slots each one may mix at every projection.

At each wrapped projection a routed row t scores its candidates c by |x_t . v_c| (v_c the candidate's
prototype at that projection, read from the pool), keeps its top_k, and mixes their deltas with
softmax(top scores / temperature) weights: PEFT's ArrowLoraLinearLayer, per row. A candidate that does
not target the projection (prototype offset < 0) does not compete there.

PEFT requires equal target sets, so it never meets a projection that only some candidates target; there
a lone candidate would get weight 1 on every token (an MLP-only adapter applied in full to every routed
request). Rows with `levels` (the router's mixed=base, the default) route such projections on
calibrated scores: |cos(x_t, v_c)| / level_c, level_c the candidate's mean |cos| on generic text (1 =
no more than any text), and the base model competes at 1 with a zero delta, taking one of the top_k
places when it wins one. Where every candidate targets the projection (PEFT's case) nothing changes.
The deltas themselves run as
(row, candidate) entries of an ordinary LoRABatchInfo (`entries`), so the heterogeneous LoRA kernels
serve them; only the per-entry weights change from projection to projection.
"""

from dataclasses import dataclass

import torch

from kernels.lora_batch import LoRABatchInfo


@dataclass(slots=True)
class ArrowRows:
    rows: torch.Tensor  # (R,) int64, token row of each routed row
    cand_slots: torch.Tensor  # (R, C) int64, candidate slots of each routed row; -1 = padding
    cand_entries: torch.Tensor  # (R, C) int64, the entry of `entries` for (row, candidate); -1 = padding
    top_k: torch.Tensor  # (R,) int64, how many candidates each row mixes, 1 <= top_k
    inv_temperature: torch.Tensor  # (R,) float32, 1 / the softmax temperature
    # (R, C) float32, each candidate's mean |cos| on generic text (> 0, padding 1); all 0 for a row routed as PEFT
    levels: torch.Tensor
    max_top_k: int  # top_k.max() on the host, for the kernels' static loops
    entries: LoRABatchInfo  # one entry per (routed row, candidate), grouped by slot; entry_rows = token rows

    def __post_init__(self):
        R, C = self.cand_slots.shape
        assert self.rows.shape == (R,) and self.cand_entries.shape == (R, C), (self.rows.shape, self.cand_entries.shape)
        assert self.top_k.shape == self.inv_temperature.shape == (R,) and self.levels.shape == (R, C)
        assert self.rows.dtype == self.cand_slots.dtype == self.cand_entries.dtype == self.top_k.dtype == torch.int64
        assert self.inv_temperature.dtype == self.levels.dtype == torch.float32 and self.max_top_k >= 1
        assert self.entries.entry_rows is not None, "the entries must name their token rows"

    @property
    def num_candidates(self) -> int:
        return self.cand_slots.shape[1]

    @classmethod
    def build(
        cls,
        candidates: list[list[int]],  # (R,) each routed row's candidate slots, in the router's order
        rows: list[int],  # (R,) token row of each
        top_k: list[int],  # (R,)
        temperature: list[float],  # (R,)
        ranks: list[int],  # (num_slots,) as the step's main info
        scalings: list[float],  # (num_slots,)
        device: torch.device | str = "cpu",
        levels: list[list[float] | None] | None = None,  # (R,) each row's candidates' levels, None: PEFT's rule
    ) -> "ArrowRows":
        C = max(len(c) for c in candidates)
        pairs = sorted((s, r) for r, cands in enumerate(candidates) for s in cands)  # grouped by slot
        entry_of = {p: e for e, p in enumerate(pairs)}
        cand_slots = [c + [-1] * (C - len(c)) for c in candidates]
        cand_entries = [[entry_of[s, r] for s in c] + [-1] * (C - len(c)) for r, c in enumerate(candidates)]
        entries = LoRABatchInfo.from_row_slots(
            [s for s, _ in pairs], ranks, scalings, device, entry_rows=[rows[r] for _, r in pairs]
        )
        levels = levels or [None] * len(candidates)
        assert all(lv is None or (len(lv) == len(c) and min(lv) > 0) for lv, c in zip(levels, candidates, strict=True))
        lv_rows = [[0.0] * C if lv is None else list(lv) + [1.0] * (C - len(lv)) for lv in levels]
        as_i64 = lambda xs: torch.tensor(xs, dtype=torch.int64, device=device)  # noqa: E731
        return cls(
            rows=as_i64(rows),
            cand_slots=as_i64(cand_slots),
            cand_entries=as_i64(cand_entries),
            top_k=as_i64(top_k),
            inv_temperature=torch.tensor([1.0 / t for t in temperature], dtype=torch.float32, device=device),
            levels=torch.tensor(lv_rows, dtype=torch.float32, device=device).reshape(len(candidates), C),
            max_top_k=max(top_k),
            entries=entries,
        )
