"""RMSNorm (+ residual), rotary and the K/V store on CPUs (elementwise.c), fp32; one C call each instead of
several torch ops. Same signatures as the torch twins (kernels/torch/rms_norm.py, rotary.py, kv_store.py)."""

import ctypes

import torch

from kernels.cpu.build import load, ptr


def available(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and load("elementwise") is not None


def add_rms_norm(
    x: torch.Tensor,  # (T, D), rows contiguous; res added to it in place when given
    res: torch.Tensor | None,  # (T, D) or None
    weight: torch.Tensor,  # (D,)
    eps: float,
) -> torch.Tensor:  # (T, D) weight * x / rms(x), a new tensor
    T, D = x.shape
    assert x.stride(1) == 1 and weight.shape == (D,) and weight.is_contiguous() and weight.dtype == x.dtype
    assert res is None or (res.shape == x.shape and res.stride(1) == 1 and res.dtype == x.dtype)
    out = torch.empty(T, D, dtype=x.dtype)
    load("elementwise").add_rms_norm_f32(
        ptr(x), ctypes.c_int64(x.stride(0)), None if res is None else ptr(res),
        ctypes.c_int64(0 if res is None else res.stride(0)), ptr(weight), ptr(out), ctypes.c_int64(D),
        ctypes.c_int64(T), ctypes.c_int64(D), ctypes.c_float(eps), ctypes.c_int64(torch.get_num_threads()),
    )  # fmt: skip
    return out


def rotary_(
    q: torch.Tensor,  # (T, H, hd), head dim contiguous; rotated in place
    k: torch.Tensor,  # (T, KH, hd)
    cos: torch.Tensor,  # (T, hd)
    sin: torch.Tensor,  # (T, hd)
) -> None:
    T, H, hd = q.shape
    assert k.shape[0] == T and k.shape[2] == hd and hd % 2 == 0 and q.stride(2) == k.stride(2) == 1
    assert cos.shape == sin.shape == (T, hd) and cos.stride() == sin.stride() and cos.stride(1) == 1
    assert q.dtype == k.dtype == cos.dtype == sin.dtype
    load("elementwise").rotary_f32(
        ptr(q), ctypes.c_int64(q.stride(0)), ctypes.c_int64(q.stride(1)), ctypes.c_int64(H),
        ptr(k), ctypes.c_int64(k.stride(0)), ctypes.c_int64(k.stride(1)), ctypes.c_int64(k.shape[1]),
        ptr(cos), ptr(sin), ctypes.c_int64(cos.stride(0)), ctypes.c_int64(T), ctypes.c_int64(hd),
        ctypes.c_int64(torch.get_num_threads()),
    )  # fmt: skip


def store_kv(
    k: torch.Tensor,  # (T, kvh, hd), each token's (kvh, hd) contiguous
    v: torch.Tensor,  # (T, kvh, hd)
    k_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd), pages may be strided
    v_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd), same strides
    slot_mapping: torch.Tensor,  # (T,) int64, page * block_size + offset; negative = skip
) -> None:
    T, kvh, hd = k.shape
    assert v.shape == k.shape and slot_mapping.shape == (T,) and slot_mapping.dtype == torch.int64
    assert k.stride()[1:] == v.stride()[1:] == (hd, 1) and slot_mapping.is_contiguous()
    assert k_cache.stride() == v_cache.stride() and k_cache.stride()[1:] == (kvh * hd, hd, 1)
    assert k.dtype == v.dtype == k_cache.dtype == v_cache.dtype and k_cache.shape[2:] == (kvh, hd)
    status = load("elementwise").store_kv_f32(
        ptr(k), ctypes.c_int64(k.stride(0)), ptr(v), ctypes.c_int64(v.stride(0)), ptr(k_cache), ptr(v_cache),
        ctypes.c_int64(k_cache.stride(0)), ctypes.c_int64(k_cache.stride(1)), ctypes.c_int64(k_cache.shape[1]),
        ctypes.c_int64(k_cache.shape[0]), ptr(slot_mapping), ctypes.c_int64(T), ctypes.c_int64(kvh * hd),
    )  # fmt: skip
    if status != 0:  # a bookkeeping bug upstream: refuse rather than write outside the pool
        raise IndexError(f"a KV slot lies past the cache's {k_cache.shape[0]} pages")
