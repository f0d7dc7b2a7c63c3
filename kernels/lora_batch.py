"""The one message the runner hands the LoRA kernels each step: which adapter slot serves which row.

Memory model: adapter weights live in the unified pool, one flat tensor `pool` (N,) in the model
dtype. For one (layer, module) the caller passes per-slot offsets: slot s keeps A_s (r_s, in) row-major
at pool[a_offsets[s]:] and B_s (out, r_s) row-major at pool[b_offsets[s]:]; an offset < 0 means the
adapter does not target that (layer, module), so its rows get no delta there. Everything below is
per step and shared by every (layer, module) call of the step.

Mixtures: a token row may carry k (adapter, weight) pairs. A slot is an (adapter, weight) pair, its
scaling already multiplied by the weight, and the info's rows are then *entries*, one per (token row,
slot) pair: `entry_rows` maps entry e to its token row, `row_slots[e]` is its slot. The kernels never
see the difference: ops.lora_apply gathers the entries' inputs, runs them as ordinary rows, and sums
each token row's entries back (index_add). With at most one pair per row, entries are the rows and
entry_rows is None (no gather). Per-token mixing (Arrow per token) only changes the weights per entry.
"""

from dataclasses import dataclass, field
from itertools import groupby, pairwise

import torch


def segments_from_row_slots(row_slots: list[int]) -> tuple[list[int], list[int]]:
    """Runs of consecutive rows sharing a slot: (indptr (S+1,), slots (S,)); -1 runs included."""
    indptr, slots = [0], []
    for slot, run in groupby(row_slots):
        indptr.append(indptr[-1] + sum(1 for _ in run))
        slots.append(slot)
    return indptr, slots


@dataclass(frozen=True, slots=True)
class RowGroups:
    """Rows with an adapter, grouped by slot: the torch twins run one matmul pair per group."""

    slots: torch.Tensor  # (G,) int64, distinct slots of the batch, in group order
    spans: list[tuple[int, int, int, float]]  # per group (start, end, rank, scaling), into the rows below
    # (n,) int64 rows grouped by slot; None when every slot's rows already form one run, and the
    # spans index the T rows directly (no gather).
    order: torch.Tensor | None
    scales: torch.Tensor  # (n, 1) float32, each of those rows' scaling; 0 for base-only rows
    # The same groups as flat tensors for the C kernel (kernels/cpu), which indexes rows in place:
    rows: torch.Tensor  # (n,) int64, token row of each grouped row (order, or 0..T-1 when order is None)
    table: torch.Tensor  # (G, 3) int64, per group (start, end, rank) into `rows`
    group_scalings: torch.Tensor  # (G,) float32


@dataclass(slots=True)
class LoRABatchInfo:
    """Per step: rows' slots, their segments, every slot's rank and scaling; kernels take it whole."""

    row_slots: torch.Tensor  # (T,) int32, adapter slot of each row; -1 = base-only
    seg_indptr: torch.Tensor  # (S+1,) int32, segment i is rows [seg_indptr[i], seg_indptr[i+1])
    seg_slots: torch.Tensor  # (S,) int32, the slot all rows of segment i share (-1 = base-only)
    ranks: torch.Tensor  # (num_slots,) int32, r of each slot (the same for all its modules)
    scalings: torch.Tensor  # (num_slots,) float32, alpha/r or alpha/sqrt(r) with rslora
    max_rank: int  # >= every rank in the batch; width of the shrink output
    max_seg_len: int  # longest segment, on the host so the SGMV grid needs no device sync
    groups: RowGroups | None = field(default=None)  # for the torch twins; see row_groups()
    # (T,) int64 when the rows above are mixture entries: the token row each one adds its delta to
    entry_rows: torch.Tensor | None = field(default=None)

    def __post_init__(self):
        T, S = self.row_slots.shape[0], self.seg_slots.shape[0]
        assert self.row_slots.dtype == self.seg_indptr.dtype == self.seg_slots.dtype == torch.int32
        assert self.seg_indptr.shape == (S + 1,), f"seg_indptr {tuple(self.seg_indptr.shape)} for {S} segments"
        assert self.ranks.dtype == torch.int32 and self.scalings.dtype == torch.float32
        assert self.ranks.shape == self.scalings.shape and self.ranks.dim() == 1
        assert self.max_rank >= 1 and (T == 0 or self.max_seg_len >= 1)
        if self.groups is None and self.row_slots.device.type == "cpu":
            self.groups = _group_rows(self.row_slots, self.seg_indptr, self.seg_slots, self.ranks, self.scalings)

    def row_groups(self) -> RowGroups:
        """Built with the info on CPU; on GPU only if a torch twin asks (one device sync, then cached)."""
        if self.groups is None:
            cpu = [t.cpu() for t in (self.row_slots, self.seg_indptr, self.seg_slots, self.ranks, self.scalings)]
            self.groups = _group_rows(*cpu)
        return self.groups

    @property
    def num_rows(self) -> int:
        return self.row_slots.shape[0]

    @property
    def decode_only(self) -> bool:
        """Every segment is one row: BGMV (one adapter per row) beats SGMV's row tiles."""
        return self.max_seg_len <= 1

    @classmethod
    def from_row_slots(
        cls,
        row_slots: list[int],  # (T,) slot per row, -1 = base-only
        ranks: list[int],  # (num_slots,)
        scalings: list[float],  # (num_slots,)
        device: torch.device | str = "cpu",
        max_rank: int | None = None,  # default: the largest rank in the batch
        entry_rows: list[int] | None = None,  # (T,) token row of each entry, when rows are mixture entries
    ) -> "LoRABatchInfo":
        indptr, seg_slots = segments_from_row_slots(row_slots)
        used = {s for s in seg_slots if s >= 0}
        rank = max((ranks[s] for s in used), default=1)
        assert max_rank is None or max_rank >= rank, f"max_rank {max_rank} < rank {rank} in the batch"
        rows = torch.tensor(row_slots, dtype=torch.int32)  # (T,)
        ranks_t = torch.tensor(ranks, dtype=torch.int32)  # (num_slots,)
        scalings_t = torch.tensor(scalings, dtype=torch.float32)  # (num_slots,)
        indptr_t = torch.tensor(indptr, dtype=torch.int32)  # (S+1,)
        seg_slots_t = torch.tensor(seg_slots, dtype=torch.int32)  # (S,)
        on_cpu = torch.device(device).type == "cpu"
        groups = _group_rows(rows, indptr_t, seg_slots_t, ranks_t, scalings_t) if on_cpu else None
        return cls(
            row_slots=rows.to(device),
            seg_indptr=indptr_t.to(device),
            seg_slots=seg_slots_t.to(device),
            ranks=ranks_t.to(device),
            scalings=scalings_t.to(device),
            max_rank=max_rank or rank,
            max_seg_len=max((b - a for a, b in pairwise(indptr)), default=0),
            groups=groups,
            entry_rows=None if entry_rows is None else torch.tensor(entry_rows, dtype=torch.int64, device=device),
        )


def _group_rows(row_slots, seg_indptr, seg_slots, ranks, scalings) -> RowGroups:
    """One sort per step (not per layer): rows grouped by slot, base-only rows dropped."""
    keep = seg_slots >= 0  # (S,)
    seg = seg_slots[keep].long()  # (S',)
    if seg.unique().numel() == seg.numel():  # each slot is one run of rows: spans are the segments
        starts, ends = seg_indptr[:-1][keep].tolist(), seg_indptr[1:][keep].tolist()
        slots, order, rows = seg, None, row_slots.long()
    else:
        rows, order = torch.sort(row_slots.long(), stable=True)  # (T,)
        lora = rows >= 0
        order, rows = order[lora], rows[lora]
        slots, counts = torch.unique_consecutive(rows, return_counts=True)
        ends = counts.cumsum(0).tolist()
        starts = [0, *ends[:-1]]
    spans = list(zip(starts, ends, ranks[slots].tolist(), scalings[slots].tolist(), strict=True))
    scales = torch.where(rows >= 0, scalings[rows.clamp(min=0)], 0.0)[:, None]  # (n, 1)
    table = torch.tensor([s[:3] for s in spans], dtype=torch.int64).reshape(-1, 3)  # (G, 3)
    return RowGroups(
        slots=slots,
        spans=spans,
        order=order,
        scales=scales,
        rows=torch.arange(row_slots.shape[0]) if order is None else order,
        table=table,
        group_scalings=scalings[slots].float(),
    )
