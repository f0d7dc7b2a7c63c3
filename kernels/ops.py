"""The one place that picks a kernel: Triton on CUDA tensors, the torch twin elsewhere."""

import os

import torch

from kernels import torch as torch_ops

_FORCE_TORCH = os.environ.get("LORAPLEX_KERNELS") == "torch"


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda and not _FORCE_TORCH


def store_kv(k, v, k_cache, v_cache, slot_mapping) -> None:
    if _use_triton(k):
        from kernels.triton.kv_store import store_kv_fwd

        return store_kv_fwd(k, v, k_cache, v_cache, slot_mapping)
    return torch_ops.store_kv(k, v, k_cache, v_cache, slot_mapping)


def paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale):
    if _use_triton(q):
        from kernels.triton.paged_attention import paged_attention_decode_fwd

        return paged_attention_decode_fwd(q, k_cache, v_cache, block_tables, context_lens, scale)
    return torch_ops.paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale)


def paged_attention_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale):
    if _use_triton(q):
        from kernels.triton.paged_attention import paged_attention_prefill_fwd

        return paged_attention_prefill_fwd(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale)
    return torch_ops.paged_attention_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale)
