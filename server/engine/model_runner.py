"""Turns a SchedulerOutput into tensors, runs the model once, samples the rows that end a sequence."""

from collections.abc import Collection
from dataclasses import dataclass

import torch

from kernels.arrow_rows import ArrowRows
from kernels.lora_batch import LoRABatchInfo
from server.adapters.manager import AdapterManager
from server.adapters.types import AdapterError
from server.engine.outputs import TokenLogprob
from server.engine.prompt_logprobs import prompt_logprobs
from server.engine.sampler import SampleRow, argmax_only, sample
from server.engine.scheduler import ScheduledChunk, SchedulerOutput
from server.engine.sequence import TokenRouting
from server.memory.device_pool import DevicePool
from server.model.batch import AttentionBatch, ForwardStep, LoRAStep
from server.model.llama import LlamaForCausalLM
from server.model.lora import add_lora, base_weights
from server.model.step_plan import StepPlan
from server.structured.masks import apply_masks, start_masks


@dataclass(slots=True)
class Sampled:
    chunk: ScheduledChunk
    token_id: int
    logprob: TokenLogprob | None
    prompt_logprobs: list[TokenLogprob] | None = None  # prompt tokens 1.. (with the sequence's first token)


def _tables(chunks: list[ScheduledChunk], device) -> torch.Tensor:
    width = max(len(c.seq.block_table) for c in chunks)
    rows = [c.seq.block_table + [0] * (width - len(c.seq.block_table)) for c in chunks]
    return torch.tensor(rows, dtype=torch.int32, device=device)  # (S, width)


class ModelRunner:
    def __init__(
        self, model: LlamaForCausalLM, pool: DevicePool, adapters: AdapterManager | None = None, seed: int = 0,
        eos_ids: Collection[int] = (),
    ):
        self.model = model
        self.pool = pool
        self.adapters = adapters
        add_lora(model)
        plan = StepPlan.build(model) if model.model.norm.weight.device.type == "cpu" else None
        self.hidden_states = model.hidden_states if plan is None else plan.hidden_states  # same signature
        if adapters is not None:  # DoRA's page-in reads the base weights of this model
            adapters.base_weight = base_weights(model)
        self.last_lora: LoRAStep | None = None  # the latest step's adapter rows, for stats and tests
        self.kv_cache = pool.kv_cache()
        self.device = pool.pages.device
        self.block_size = pool.block_size
        self.generators: dict[int, torch.Generator] = {}  # seq_id -> generator, for seeded sequences
        self.default_generator = torch.Generator().manual_seed(seed)
        self.eos_ids = frozenset(eos_ids)  # masked while a sequence is short of min_tokens
        self.partial_prompt_logprobs: dict[int, list[TokenLogprob]] = {}  # seq_id -> scored so far, until it samples

    def build(self, out: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionBatch]:
        bs, dev = self.block_size, self.device
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_at: list[int] = []
        cu = [0]
        for chunk in out.chunks:
            seq, start, n = chunk.seq, chunk.start, chunk.num_tokens
            table = seq.block_table
            ids += seq.tokens(start, start + n)
            positions += range(start, start + n)
            slots += [table[p // bs] * bs + p % bs for p in range(start, start + n)]
            cu.append(cu[-1] + n)
            if chunk.samples:
                logits_at.append(cu[-1] - 1)
        P = len(out.prefills)
        as_i32 = lambda xs: torch.tensor(xs, dtype=torch.int32, device=dev)  # noqa: E731
        batch = AttentionBatch(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            num_prefill_tokens=cu[P],
            prefill_block_tables=_tables(out.prefills, dev) if P else None,
            prefill_cu_seqlens=as_i32(cu[: P + 1]) if P else None,
            prefill_context_lens=as_i32([c.start + c.num_tokens for c in out.prefills]) if P else None,
            decode_block_tables=_tables(out.decodes, dev) if out.decodes else None,
            decode_context_lens=as_i32([c.start + 1 for c in out.decodes]) if out.decodes else None,
            logits_indices=torch.tensor(logits_at, dtype=torch.int64, device=dev),
        )
        input_ids = torch.tensor(ids, dtype=torch.int64, device=dev)  # (T,)
        pos = torch.tensor(positions, dtype=torch.int64, device=dev)  # (T,)
        return input_ids, pos, batch

    def lora_step(self, out: SchedulerOutput) -> LoRAStep | None:
        """One slot per distinct (adapter, weight) of this step, in order of first appearance; None if base-only.

        Rows of single-adapter sequences are the kernels' rows; once any sequence mixes adapters, the
        kernels' rows become (row, slot) entries grouped by slot (see kernels/lora_batch.py). Rows of
        sequences routed per token are base-only there: their candidates' entries go in `arrow`.
        """
        slot_of: dict[tuple[int, float], int] = {}
        row_slots: list[int] = []
        entries: list[tuple[int, int]] = []  # (slot, token row), only built when a sequence mixes
        routed: list[tuple[list[int], int, TokenRouting]] = []  # (candidate slots, token row, routing)
        mixed = any(len(c.seq.lora) > 1 and c.seq.routing is None for c in out.chunks)
        row = 0
        for chunk in out.chunks:
            routing, rows = chunk.seq.routing, range(row, row + chunk.num_tokens)
            pairs = chunk.seq.lora if routing is None else [(a, 1.0) for a, _ in chunk.seq.lora]
            slots = [slot_of.setdefault(pair, len(slot_of)) for pair in pairs]
            if routing is not None:
                routed += [(slots, r, routing) for r in rows]
                slots = []
            if mixed:
                entries += [(s, r) for s in slots for r in rows]
            else:
                row_slots += [slots[0] if slots else -1] * chunk.num_tokens
            row += chunk.num_tokens
        if not slot_of:
            return None
        refs = [self.adapters.ref(a) for a, _ in slot_of]
        ranks = [r.rank for r in refs]
        scalings = [ref.scaling * w for ref, (_, w) in zip(refs, slot_of, strict=True)]
        entry_rows = None
        if mixed:
            entries.sort()  # stable order, grouped by slot: each slot's entries are one run
            row_slots, entry_rows = [s for s, _ in entries], [r for _, r in entries]
        info = LoRABatchInfo.from_row_slots(row_slots, ranks, scalings, self.device, entry_rows=entry_rows)
        offsets = [self.adapters.offsets(a) for a, _ in slot_of]
        a = torch.stack([o[0] for o in offsets]).to(self.device)  # (slots, L, M)
        b = torch.stack([o[1] for o in offsets]).to(self.device)
        step = LoRAStep(info, a, b, self.pool.pages.view(-1), self._scale_offsets(slot_of, a, mixed))
        if routed:
            cands, rows, routings = zip(*routed, strict=True)
            step.arrow = ArrowRows.build(list(cands), list(rows), [r.top_k for r in routings],
                                         [r.temperature for r in routings], ranks, scalings, self.device,
                                         [r.levels for r in routings])
            step.proto_offsets = self._offsets_of(slot_of, "proto", a)
        return step

    def _offsets_of(self, slot_of: dict[tuple[int, float], int], factor: str, a: torch.Tensor) -> torch.Tensor:
        """(slots, L, M) offsets of one pool factor, -1 for slots whose format has none."""
        minus = torch.full_like(a[0], -1, device="cpu")  # (L, M)
        tables = [self.adapters.factor_offsets(adapter, factor) for adapter, _ in slot_of]
        return torch.stack([minus if t is None else t for t in tables]).to(self.device)

    def _scale_offsets(self, slot_of: dict[tuple[int, float], int], a: torch.Tensor, mixed: bool,
                       ) -> torch.Tensor | None:
        """(slots, L, M) offsets of DoRA slots' scales, -1 for LoRA slots; None when the step has no DoRA."""
        tables = [self.adapters.factor_offsets(adapter, "scale") for adapter, _ in slot_of]
        if all(t is None for t in tables):
            return None
        if mixed:  # a rescale of (base + sum of deltas) has no per-entry meaning
            dora = next(a for (a, _), t in zip(slot_of, tables, strict=True) if t is not None)
            raise AdapterError(f"DoRA adapter {self.adapters.ref(dora).name!r} cannot be mixed with other adapters"
                               f" in one row")
        minus = torch.full_like(a[0], -1, device="cpu")  # (L, M)
        return torch.stack([minus if t is None else t for t in tables]).to(self.device)  # (slots, L, M)

    @torch.inference_mode()
    def features(self, out: SchedulerOutput, keys: set[tuple[int, str]]) -> dict[tuple[int, str], torch.Tensor]:
        """A base-only forward of `out`; returns the inputs (T, in) of the (layer, module) projections in keys."""
        input_ids, positions, batch = self.build(out)
        step = ForwardStep(batch, capture=dict.fromkeys(keys))
        self.model.hidden_states(input_ids, positions, step, self.kv_cache)
        return {k: x for k, x in step.capture.items() if x is not None}

    @torch.inference_mode()
    def run(self, out: SchedulerOutput) -> list[Sampled]:
        # rows of one adapter side by side: each adapter's rows are one run for the LoRA kernels
        out.prefills.sort(key=lambda c: c.seq.lora)
        out.decodes.sort(key=lambda c: c.seq.lora)
        input_ids, positions, batch = self.build(out)
        # the model may be shared between engines: the step names this engine's pool
        self.last_lora = self.lora_step(out) if self.adapters is not None else None
        sampling = [c for c in out.chunks if c.samples]
        masks = start_masks([c.seq.grammar for c in sampling])  # filled while the forward runs
        hidden = self.hidden_states(input_ids, positions, ForwardStep(batch, self.last_lora), self.kv_cache)
        self._score_prompts(out, hidden)
        if not sampling:
            return []
        if masks is None and all(argmax_only(c.seq.params) for c in sampling):  # no draw, no logprob, no mask
            tokens = self.model.greedy_tokens(hidden[batch.logits_indices]).tolist()  # (S,)
            logprobs = [None] * len(sampling)
        else:
            logits = self.model.logits(hidden[batch.logits_indices])  # (S, V)
            rows = [SampleRow(c.seq.params, self.generators.get(c.seq.seq_id), c.seq.prompt_ids, c.seq.output_ids)
                    for c in sampling]
            tokens, logprobs = sample(apply_masks(logits.float().cpu(), masks), rows, self.default_generator,
                                      self.eos_ids)
        return [
            Sampled(c, t, lp, self.partial_prompt_logprobs.pop(c.seq.seq_id, None) if not c.seq.output_ids else None)
            for c, t, lp in zip(sampling, tokens, logprobs, strict=True)
        ]

    def _score_prompts(self, out: SchedulerOutput, hidden: torch.Tensor) -> None:
        """Prompt logprobs of the prefill chunks that ask for them; a recomputed position is not scored twice."""
        row = 0
        for chunk in out.chunks:  # packed in this order (build); a 1-token prompt chunk sits among the decodes
            seq, k = chunk.seq, chunk.seq.params.prompt_logprobs
            if k is not None and not seq.output_ids:
                done = self.partial_prompt_logprobs.setdefault(seq.seq_id, [])
                lo, hi = max(chunk.start, len(done)), min(chunk.start + chunk.num_tokens, len(seq.prompt_ids) - 1)
                if lo < hi:
                    targets = seq.prompt_ids[lo + 1 : hi + 1]
                    done += prompt_logprobs(hidden, self.model.logits, row + lo - chunk.start, targets, k)
            row += chunk.num_tokens
