import os

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kc_page,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_page,
    stride_vc_slot,
    stride_vc_head,
    num_kv_heads,
    head_dim,
    PAGE_SIZE: tl.constexpr,  # the cache's block_size, in tokens
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token)  # int64
    if slot < 0:  # a token whose KV is not kept (padding)
        return
    page = slot // PAGE_SIZE
    offset = slot % PAGE_SIZE
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    mask = (h < num_kv_heads)[:, None] & (d < head_dim)[None, :]  # (BLOCK_H, BLOCK_D)
    src = token.to(tl.int64)
    k = tl.load(k_ptr + src * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
    v = tl.load(v_ptr + src * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask)
    k_dst = page * stride_kc_page + offset * stride_kc_slot + h[:, None] * stride_kc_head + d[None, :]
    v_dst = page * stride_vc_page + offset * stride_vc_slot + h[:, None] * stride_vc_head + d[None, :]
    tl.store(k_cache_ptr + k_dst, k, mask=mask)
    tl.store(v_cache_ptr + v_dst, v, mask=mask)


def _check_device(*tensors: torch.Tensor) -> None:
    device = tensors[0].device
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    for t in tensors:
        assert t.device == device, f"all tensors must share a device, got {t.device} and {device}"
        assert t.is_cuda or interpret, "Triton kernels need CUDA tensors (or TRITON_INTERPRET=1)"


def store_kv_fwd(
    k: torch.Tensor,  # (T, kvh, hd)
    v: torch.Tensor,  # (T, kvh, hd)
    k_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd), usually a strided view of the pool
    v_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd)
    slot_mapping: torch.Tensor,  # (T,) int64, page * block_size + offset; negative = skip
) -> None:
    """Write each token's K and V into its cache slot, one program per token."""
    assert k.dim() == 3 and k.shape == v.shape, f"k {tuple(k.shape)} and v {tuple(v.shape)}"
    assert k_cache.dim() == 4 and k_cache.shape == v_cache.shape
    T, kvh, hd = k.shape
    assert k_cache.shape[2:] == (kvh, hd), f"cache {tuple(k_cache.shape)} vs k {tuple(k.shape)}"
    assert slot_mapping.shape == (T,) and slot_mapping.dtype == torch.int64
    assert k.dtype == v.dtype == k_cache.dtype == v_cache.dtype
    assert k.stride(-1) == 1 and v.stride(-1) == 1, "head dim of k and v must be contiguous"
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1, "head dim of the caches must be contiguous"
    assert slot_mapping.is_contiguous()
    _check_device(k, v, k_cache, v_cache, slot_mapping)
    if T == 0:
        return
    _store_kv_kernel[(T,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1),
        v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        kvh, hd,
        PAGE_SIZE=k_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(kvh),
        BLOCK_D=triton.next_power_of_2(hd),
    )
