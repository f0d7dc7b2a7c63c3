"""Paged attention on CPUs (paged_attention.c), decode and prefill: keys and values read in place
through the block tables, on torch's own OpenMP threads. Same signatures as the torch twins, checked
against them."""

import ctypes

import torch

from kernels.cpu.build import bind, load, ptr

_FUNCS = {torch.float32: "paged_decode_f32", torch.bfloat16: "paged_decode_bf16"}
_PREFILL_FUNCS = {torch.float32: "paged_prefill_f32", torch.bfloat16: "paged_prefill_bf16"}
_PREFILL_REFUSALS = {
    -1: "head counts or head dim out of range (query heads per kv head <= 16, head dim <= 256)",
    -2: "out of memory",
    -3: "cu_seqlens_q must start at 0, end at Tq and give each sequence at most context_lens[i] queries",
    -4: "a sequence's context reaches past its block table or onto a page that does not exist",
}


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
    status = bind("paged_attention", _FUNCS[q.dtype], "pppipippiiiiifi")(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), k_cache.stride(0), block_tables.data_ptr(),
        block_tables.stride(0), context_lens.data_ptr(), out.data_ptr(), B, H, kvh, hd, bs, scale,
        torch.get_num_threads(),
    )  # fmt: skip
    assert status == 0, f"paged_attention.c refused (status {status}): H={H} kvh={kvh} hd={hd}"
    return out


def paged_attention_prefill(
    q: torch.Tensor,  # (Tq, H, hd), the query tokens of every sequence, packed
    k_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd), pages may be strided
    v_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd), same strides as k_cache
    block_tables: torch.Tensor,  # (S, max_blocks) int32
    cu_seqlens_q: torch.Tensor,  # (S + 1,) int32, offsets of each sequence's queries in q
    context_lens: torch.Tensor,  # (S,) int32; sequence i's queries sit at the last q_len_i positions
    scale: float,
) -> torch.Tensor:  # (Tq, H, hd)
    """Causal attention of query chunks against their sequences' cached keys (prefix included)."""
    # Real checks, not asserts: under python -O a bad layout would read past the pool.
    if q.dim() != 3 or k_cache.dim() != 4 or q.dtype not in _PREFILL_FUNCS:
        raise ValueError(f"q (Tq, H, hd) and caches (pages, bs, kvh, hd) of fp32/bf16, got {q.shape} {q.dtype}")
    Tq, H, hd = q.shape
    num_pages, bs, kvh, _ = k_cache.shape
    S = block_tables.shape[0]
    if not q.dtype == k_cache.dtype == v_cache.dtype or not q.device.type == k_cache.device.type == "cpu":
        raise ValueError(f"q and caches must share a dtype on the CPU: {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if k_cache.shape[3] != hd or v_cache.shape != k_cache.shape or H % kvh:
        raise ValueError(f"q {tuple(q.shape)} does not fit caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    if k_cache.stride() != v_cache.stride() or k_cache.stride()[1:] != (kvh * hd, hd, 1):
        raise ValueError(f"caches must be pages of contiguous (bs, kvh, hd) rows, strides {k_cache.stride()}")
    if block_tables.dtype != torch.int32 or block_tables.dim() != 2 or block_tables.stride(1) != 1:
        raise ValueError(f"block_tables must be (S, max_blocks) int32 rows, got {block_tables.dtype}")
    for name, t, shape in (("cu_seqlens_q", cu_seqlens_q, (S + 1,)), ("context_lens", context_lens, (S,))):
        if t.dtype != torch.int32 or t.shape != shape or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous int32 of shape {shape}, got {t.dtype} {tuple(t.shape)}")
    q = q.contiguous()
    out = torch.empty_like(q)
    status = getattr(load("paged_attention"), _PREFILL_FUNCS[q.dtype])(
        ptr(q), ptr(k_cache), ptr(v_cache), ctypes.c_int64(k_cache.stride(0)), ctypes.c_int64(num_pages),
        ptr(block_tables), ctypes.c_int64(block_tables.stride(0)), ctypes.c_int64(block_tables.shape[1]),
        ptr(cu_seqlens_q), ptr(context_lens), ptr(out),
        ctypes.c_int64(Tq), ctypes.c_int64(S), ctypes.c_int64(H), ctypes.c_int64(kvh), ctypes.c_int64(hd),
        ctypes.c_int64(bs), ctypes.c_float(scale), ctypes.c_int64(torch.get_num_threads()),
    )  # fmt: skip
    if status != 0:
        raise ValueError(f"paged_attention.c refused the prefill (status {status}): {_PREFILL_REFUSALS.get(status)}")
    return out
