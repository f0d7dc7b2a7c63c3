"""The one message the model runner hands the model each step."""

from dataclasses import dataclass, field

import torch

from kernels.arrow_rows import ArrowRows
from kernels.lora_batch import LoRABatchInfo


@dataclass(slots=True)
class AttentionBatch:
    """Tokens are packed: every prefill chunk (sequence by sequence), then one token per decode row."""

    slot_mapping: torch.Tensor  # (T,) int64, KV slot of each token: page * block_size + offset
    num_prefill_tokens: int  # the first this-many tokens belong to prefill chunks
    prefill_block_tables: torch.Tensor | None  # (P, max_blocks) int32
    prefill_cu_seqlens: torch.Tensor | None  # (P + 1,) int32, chunk offsets in the packed tokens
    prefill_context_lens: torch.Tensor | None  # (P,) int32, cached prefix + chunk
    decode_block_tables: torch.Tensor | None  # (D, max_blocks) int32
    decode_context_lens: torch.Tensor | None  # (D,) int32, cached tokens + this one
    logits_indices: torch.Tensor  # (S,) int64, packed positions whose next-token logits are sampled


@dataclass(slots=True)
class LoRAStep:
    """The adapter rows of one step, shared by every wrapped projection."""

    info: LoRABatchInfo  # row -> slot, segments, per-slot rank and scaling
    a_offsets: torch.Tensor  # (num_slots, L, M) int64, pool offset of A per slot/layer/module; -1 = not targeted
    b_offsets: torch.Tensor  # (num_slots, L, M) int64, pool offset of B
    pool_flat: torch.Tensor  # (N,) the unified pool viewed flat, where the offsets point
    # (num_slots, L, M) int64, pool offset of a DoRA slot's per-channel scale (out,); -1 = plain LoRA there;
    # None when no slot of the step is DoRA (no rescale at all)
    scale_offsets: torch.Tensor | None = None
    # rows routed per token by Arrow (their deltas are not in `info`: those rows are base-only there), and
    # (num_slots, L, M) int64 pool offsets of each slot's Arrow prototype (in,); -1 = not targeted
    arrow: ArrowRows | None = None
    proto_offsets: torch.Tensor | None = None
    # [layer][module]: whether any slot has factors there; a projection no slot targets skips its LoRA calls
    targeted: list[list[bool]] = field(init=False)

    def __post_init__(self) -> None:
        self.targeted = (self.a_offsets >= 0).any(dim=0).tolist()  # one sync per step, not one per projection


@dataclass(slots=True)
class ForwardStep:
    """All a forward needs besides the tokens, handed down layer by layer (no state on the model)."""

    attention: AttentionBatch
    lora: LoRAStep | None = None  # this step's adapter rows; None = every row runs the base model
    # a routing pass: (layer, module name) -> that projection's input (T, in), filled in by the forward
    capture: dict[tuple[int, str], torch.Tensor | None] | None = None
