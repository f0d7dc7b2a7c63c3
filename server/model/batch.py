"""The one message the model runner hands the model each step."""

from dataclasses import dataclass

import torch


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
