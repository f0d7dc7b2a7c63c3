"""RMSNorm (+ residual), rotary and the K/V store on CPUs (elementwise.c), fp32; one C call each instead of
several torch ops. Same signatures as the torch twins (kernels/torch/rms_norm.py, rotary.py, kv_store.py)."""

import torch

from kernels.cpu.build import bind, load


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
    bind("elementwise", "add_rms_norm_f32", "pipippiiifi")(
        x.data_ptr(), x.stride(0), None if res is None else res.data_ptr(), 0 if res is None else res.stride(0),
        weight.data_ptr(), out.data_ptr(), D, T, D, eps, torch.get_num_threads(),
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
    bind("elementwise", "rotary_f32", "piiipiiippiiii")(
        q.data_ptr(), q.stride(0), q.stride(1), H, k.data_ptr(), k.stride(0), k.stride(1), k.shape[1],
        cos.data_ptr(), sin.data_ptr(), cos.stride(0), T, hd, torch.get_num_threads(),
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
    status = bind("elementwise", "store_kv_f32", "pipippiiiipii")(
        k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
        k_cache.stride(0), k_cache.stride(1), k_cache.shape[1], k_cache.shape[0], slot_mapping.data_ptr(), T, kvh * hd,
    )  # fmt: skip
    if status != 0:  # a bookkeeping bug upstream: refuse rather than write outside the pool
        raise IndexError(f"a KV slot lies past the cache's {k_cache.shape[0]} pages")


def silu_mul(
    gate: torch.Tensor,  # (T, I), rows contiguous (a column view of the fused gate/up output)
    up: torch.Tensor,  # (T, I)
) -> torch.Tensor:  # (T, I) silu(gate) * up, a new tensor
    T, width = gate.shape
    assert up.shape == (T, width) and gate.stride(1) == up.stride(1) == 1
    assert gate.dtype == up.dtype == torch.float32
    out = torch.empty(T, width, dtype=gate.dtype)
    bind("elementwise", "silu_mul_f32", "pipipiiii")(
        gate.data_ptr(), gate.stride(0), up.data_ptr(), up.stride(0), out.data_ptr(), width, T, width,
        torch.get_num_threads(),
    )
    return out
