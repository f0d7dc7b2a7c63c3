"""Paged decode attention on CPUs (paged_attention.c): keys and values read in place through the
block tables, on torch's own OpenMP threads. Same signature as the torch twin, checked against it."""

import ctypes

import torch

from kernels.cpu.build import load, ptr

_FUNCS = {torch.float32: "paged_decode_f32", torch.bfloat16: "paged_decode_bf16"}


def available(q: torch.Tensor) -> bool:
    return q.device.type == "cpu" and q.dtype in _FUNCS and load("paged_attention") is not None


def paged_attention_decode(
    q: torch.Tensor,  # (B, H, hd), one query token per sequence
    k_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd), pages may be strided
    v_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd), same strides as k_cache
    block_tables: torch.Tensor,  # (B, max_blocks) int32
    context_lens: torch.Tensor,  # (B,) int32, keys visible to each query (its own included)
    scale: float,
) -> torch.Tensor:  # (B, H, hd)
    B, H, hd = q.shape
    _, bs, kvh, _ = k_cache.shape
    q = q.contiguous()
    assert H % kvh == 0 and q.dtype == k_cache.dtype == v_cache.dtype and k_cache.shape[3] == hd
    assert k_cache.stride() == v_cache.stride() and k_cache.stride()[1:] == (kvh * hd, hd, 1)
    assert block_tables.dtype == context_lens.dtype == torch.int32 and block_tables.stride(1) == 1
    assert block_tables.shape[0] == B and context_lens.shape == (B,) and context_lens.is_contiguous()
    out = torch.empty_like(q)
    status = getattr(load("paged_attention"), _FUNCS[q.dtype])(
        ptr(q), ptr(k_cache), ptr(v_cache), ctypes.c_int64(k_cache.stride(0)),
        ptr(block_tables), ctypes.c_int64(block_tables.stride(0)), ptr(context_lens), ptr(out),
        ctypes.c_int64(B), ctypes.c_int64(H), ctypes.c_int64(kvh), ctypes.c_int64(hd), ctypes.c_int64(bs),
        ctypes.c_float(scale), ctypes.c_int64(torch.get_num_threads()),
    )  # fmt: skip
    assert status == 0, f"paged_attention.c refused (status {status}): H={H} kvh={kvh} hd={hd}"
    return out
