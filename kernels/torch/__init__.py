"""Torch twins of the Triton kernels: the reference, and the path that serves on CPU."""

from kernels.torch.kv_store import store_kv
from kernels.torch.paged_attention import paged_attention_decode, paged_attention_prefill

__all__ = ["paged_attention_decode", "paged_attention_prefill", "store_kv"]
