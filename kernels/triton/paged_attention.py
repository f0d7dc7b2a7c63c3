import math
import os

import torch
import triton
import triton.language as tl

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# tl.dot wants every dimension >= 16; smaller tiles are padded and masked.
_MIN_DOT = 16
_BLOCK_N = 64  # keys per inner-loop step, independent of the cache's block_size
_PREFILL_ROWS = 64  # (query token, head) rows per prefill program


@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # Triton's interpreter multiplies the raw bits of bf16 operands in tl.dot (triton#11584).
    # Products of bf16 values are exact in fp32, so upcasting there changes nothing but that.
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _attend(
    q,  # (BLOCK_M, BLOCK_D), query rows that share one kv head
    q_pos,  # (BLOCK_M,) position in the sequence of each row's query
    kv_end,  # keys [0, kv_end) are visited; the causal mask trims each row further
    table_ptr,  # this sequence's row of the block table
    k_ptr,  # k_cache, already offset to this kv head
    v_ptr,
    stride_kp,
    stride_ks,
    stride_vp,
    stride_vs,
    head_dim,
    qk_scale,  # softmax scale * log2(e), so the loop can use exp2
    PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Online-softmax attention of q over a sequence's paged keys; returns (BLOCK_M, BLOCK_D) fp32."""
    d = tl.arange(0, BLOCK_D)
    d_mask = d < head_dim
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    # Every row sees key 0 in the first step (q_pos >= 0), so m_i is finite after it and no
    # -inf - -inf NaN can arise, not even in padding rows.
    for start in range(0, kv_end, BLOCK_N):
        k_pos = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        k_valid = k_pos < kv_end
        # Keys are gathered token by token, so the tile size need not match the page size.
        page = tl.load(table_ptr + k_pos // PAGE_SIZE, mask=k_valid, other=0).to(tl.int64)
        slot = k_pos % PAGE_SIZE
        kv_mask = k_valid[:, None] & d_mask[None, :]
        k = tl.load(
            k_ptr + page[:, None] * stride_kp + slot[:, None] * stride_ks + d[None, :], mask=kv_mask, other=0.0
        )  # (BLOCK_N, BLOCK_D)
        v = tl.load(
            v_ptr + page[:, None] * stride_vp + slot[:, None] * stride_vs + d[None, :], mask=kv_mask, other=0.0
        )  # (BLOCK_N, BLOCK_D)
        s = _dot(q, tl.trans(k), None, DOT_PRECISION, UPCAST) * qk_scale  # (BLOCK_M, BLOCK_N)
        visible = (k_pos[None, :] <= q_pos[:, None]) & k_valid[None, :]
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])  # (BLOCK_M, BLOCK_N)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], DOT_PRECISION, UPCAST)
        m_i = m_new
    return acc / l_i[:, None]


@triton.jit
def _paged_attention_decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    context_lens_ptr,
    out_ptr,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_kp,
    stride_ks,
    stride_kh,
    stride_vp,
    stride_vs,
    stride_vh,
    stride_bt,
    stride_ob,
    stride_oh,
    head_dim,
    GROUP: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # One program per (sequence, kv head): its GROUP query heads are the rows, so each key tile is
    # loaded once for the whole group.
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    ctx = tl.load(context_lens_ptr + seq)
    r = tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    head = kv_head * GROUP + r  # (BLOCK_M,)
    mask = (r < GROUP)[:, None] & (d < head_dim)[None, :]
    q = tl.load(q_ptr + seq * stride_qb + head[:, None] * stride_qh + d[None, :], mask=mask, other=0.0)
    q_pos = tl.zeros((BLOCK_M,), tl.int32) + ctx - 1
    o = _attend(
        q, q_pos, ctx, block_tables_ptr + seq.to(tl.int64) * stride_bt,
        k_cache_ptr + kv_head * stride_kh, v_cache_ptr + kv_head * stride_vh,
        stride_kp, stride_ks, stride_vp, stride_vs, head_dim, qk_scale,
        PAGE_SIZE, BLOCK_M, BLOCK_N, BLOCK_D, DOT_PRECISION, UPCAST,
    )  # (BLOCK_M, BLOCK_D)
    out = out_ptr + seq * stride_ob + head[:, None] * stride_oh + d[None, :]
    tl.store(out, o.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _paged_attention_prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    cu_seqlens_q_ptr,
    context_lens_ptr,
    out_ptr,
    qk_scale,
    stride_qt,
    stride_qh,
    stride_kp,
    stride_ks,
    stride_kh,
    stride_vp,
    stride_vs,
    stride_vh,
    stride_bt,
    stride_ot,
    stride_oh,
    head_dim,
    GROUP: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # One program per (tile of BLOCK_Q query tokens, sequence, kv head); rows are (token, head of
    # the group) pairs, so GQA heads share each key tile as in decode.
    q_tile = tl.program_id(0)
    seq = tl.program_id(1)
    kv_head = tl.program_id(2)
    q_begin = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_begin
    q_start = q_tile * BLOCK_Q
    if q_start >= q_len:
        return
    ctx = tl.load(context_lens_ptr + seq)
    r = tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    t = q_start + r // GROUP  # (BLOCK_M,) query index within this sequence's chunk
    head = kv_head * GROUP + r % GROUP  # (BLOCK_M,)
    row_valid = (r < BLOCK_Q * GROUP) & (t < q_len)
    mask = row_valid[:, None] & (d < head_dim)[None, :]
    token = (q_begin + t).to(tl.int64)
    q = tl.load(q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :], mask=mask, other=0.0)
    # The chunk is the last q_len positions of the context: a cached prefix precedes it.
    q_pos = ctx - q_len + t
    kv_end = ctx - q_len + tl.minimum(q_len, q_start + BLOCK_Q)
    o = _attend(
        q, q_pos, kv_end, block_tables_ptr + seq.to(tl.int64) * stride_bt,
        k_cache_ptr + kv_head * stride_kh, v_cache_ptr + kv_head * stride_vh,
        stride_kp, stride_ks, stride_vp, stride_vs, head_dim, qk_scale,
        PAGE_SIZE, BLOCK_M, BLOCK_N, BLOCK_D, DOT_PRECISION, UPCAST,
    )  # (BLOCK_M, BLOCK_D)
    out = out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
    tl.store(out, o.to(out_ptr.dtype.element_ty), mask=mask)


def _check_inputs(q, k_cache, v_cache, block_tables, context_lens, num_seqs: int) -> int:
    """Assert what both kernels assume; return the GQA group size."""
    assert q.dim() == 3 and q.is_contiguous(), f"q must be a contiguous (tokens, H, hd), got {tuple(q.shape)}"
    assert q.dtype in _DTYPES, f"unsupported dtype {q.dtype}"
    assert k_cache.dim() == 4 and k_cache.shape == v_cache.shape
    assert k_cache.dtype == v_cache.dtype == q.dtype
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1, "head dim of the caches must be contiguous"
    H, hd, kvh = q.shape[1], q.shape[2], k_cache.shape[2]
    assert k_cache.shape[3] == hd, f"cache head dim {k_cache.shape[3]} != q head dim {hd}"
    assert H % kvh == 0, f"{H} query heads do not split over {kvh} kv heads"
    assert block_tables.dim() == 2 and block_tables.shape[0] == num_seqs and block_tables.is_contiguous()
    assert block_tables.dtype == torch.int32 and context_lens.dtype == torch.int32
    assert context_lens.shape == (num_seqs,) and context_lens.is_contiguous()
    devices = {t.device for t in (q, k_cache, v_cache, block_tables, context_lens)}
    assert len(devices) == 1, f"inputs on several devices: {devices}"
    assert q.is_cuda or _interpreting(), "needs CUDA tensors (or TRITON_INTERPRET=1)"
    return H // kvh


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs ask for fp32 accuracy: no TF32 rounding inside tl.dot.
    return "ieee" if dtype == torch.float32 else "tf32"


def paged_attention_decode_fwd(
    q: torch.Tensor,  # (B, H, hd), one query token per sequence
    k_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd), may be a strided view of the pool
    v_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd)
    block_tables: torch.Tensor,  # (B, max_blocks) int32
    context_lens: torch.Tensor,  # (B,) int32, keys visible to each query (its own included)
    scale: float,
) -> torch.Tensor:  # (B, H, hd)
    group = _check_inputs(q, k_cache, v_cache, block_tables, context_lens, q.shape[0])
    B, H, hd = q.shape
    kvh = k_cache.shape[2]
    out = torch.empty_like(q)  # (B, H, hd)
    if B == 0:
        return out
    _paged_attention_decode_kernel[(B, kvh)](
        q, k_cache, v_cache, block_tables, context_lens, out,
        scale * math.log2(math.e),
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        hd,
        GROUP=group,
        PAGE_SIZE=k_cache.shape[1],
        BLOCK_M=max(_MIN_DOT, triton.next_power_of_2(group)),
        BLOCK_N=_BLOCK_N,
        BLOCK_D=max(_MIN_DOT, triton.next_power_of_2(hd)),
        DOT_PRECISION=_dot_precision(q.dtype),
        UPCAST=_interpreting(),
    )
    return out


def paged_attention_prefill_fwd(
    q: torch.Tensor,  # (Tq, H, hd), the query tokens of every sequence, packed
    k_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd), may be a strided view of the pool
    v_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd)
    block_tables: torch.Tensor,  # (S, max_blocks) int32
    cu_seqlens_q: torch.Tensor,  # (S + 1,) int32, offsets of each sequence's queries in q
    context_lens: torch.Tensor,  # (S,) int32; sequence i's queries sit at the last q_len_i positions
    scale: float,
) -> torch.Tensor:  # (Tq, H, hd)
    S = block_tables.shape[0]
    group = _check_inputs(q, k_cache, v_cache, block_tables, context_lens, S)
    Tq, H, hd = q.shape
    assert cu_seqlens_q.shape == (S + 1,) and cu_seqlens_q.dtype == torch.int32 and cu_seqlens_q.is_contiguous()
    assert cu_seqlens_q.device == q.device
    kvh = k_cache.shape[2]
    out = torch.empty_like(q)  # (Tq, H, hd)
    if Tq == 0 or S == 0:
        return out
    # The grid needs the longest chunk; one host sync per prefill step, as the twin does.
    max_q_len = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
    block_m = max(_PREFILL_ROWS, triton.next_power_of_2(group))
    block_q = block_m // group
    _paged_attention_prefill_kernel[(triton.cdiv(max_q_len, block_q), S, kvh)](
        q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, out,
        scale * math.log2(math.e),
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        hd,
        GROUP=group,
        PAGE_SIZE=k_cache.shape[1],
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        BLOCK_N=_BLOCK_N,
        BLOCK_D=max(_MIN_DOT, triton.next_power_of_2(hd)),
        DOT_PRECISION=_dot_precision(q.dtype),
        UPCAST=_interpreting(),
    )
    return out
