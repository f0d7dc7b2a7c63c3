"""Paged attention: the torch twins against dense attention, the Triton and CPU C kernels against the twins.

Triton runs under its interpreter on CPU tensors unless TRITON_INTERPRET=0 is set on a CUDA machine.
"""

import pytest
import torch

from kernels import ops
from kernels.cpu import paged_attention as cpu_attention
from kernels.torch import paged_attention_decode, paged_attention_prefill
from tests.kernels.triton_support import DEVICE, triton_skip  # sets TRITON_INTERPRET before kernels.triton loads

try:
    from kernels.triton.paged_attention import paged_attention_decode_fwd, paged_attention_prefill_fwd

    _TRITON_ERROR = None
except ImportError as e:
    _TRITON_ERROR = e

needs_triton = triton_skip(_TRITON_ERROR)
needs_cc = pytest.mark.skipif(
    not cpu_attention.available(torch.zeros(1)), reason="no C compiler: the CPU kernel is off"
)

NUM_LAYERS = 2
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}

# (block_size, kv heads, group, head dim, context lengths): lengths below, at and over one block,
# and past the kernels' 64-key tile.
DECODE_CASES = [
    (4, 2, 3, 16, [1, 4, 9]),
    (16, 1, 1, 32, [5, 16, 17, 130]),
    (16, 3, 3, 24, [70, 2]),
]
# (block_size, kv heads, group, head dim, [(context length, query chunk length)]); chunk == context
# is a fresh prefill, a shorter chunk sits behind a cached prefix.
PREFILL_CASES = [
    (4, 2, 3, 16, [(1, 1), (4, 4), (9, 9)]),
    (16, 1, 1, 32, [(20, 4), (16, 16), (70, 3), (1, 1)]),
    (16, 2, 3, 24, [(75, 30), (5, 2), (17, 17)]),
    (4, 1, 1, 16, [(70, 70), (130, 66)]),
]


def _paged_kv(lens: list[int], block_size: int, kvh: int, hd: int, dtype: torch.dtype, seed: int = 0):
    """K/V for `lens` tokens per sequence, scattered over shuffled pages of a multi-layer pool."""
    gen = torch.Generator().manual_seed(seed)
    blocks = [-(-n // block_size) for n in lens]
    num_pages = sum(blocks) + 2  # a few pages no sequence owns
    pool = torch.randn(num_pages * NUM_LAYERS * 2 * block_size * kvh * hd, generator=gen)
    pool = pool.to(dtype).view(num_pages, NUM_LAYERS, 2, block_size, kvh, hd).to(DEVICE)
    k_cache, v_cache = pool[:, 1, 0], pool[:, 1, 1]  # (num_pages, block_size, kvh, hd), strided
    pages = torch.randperm(num_pages, generator=gen).tolist()
    # One spare column, padded with -1, so a read past a sequence's blocks cannot go unnoticed.
    block_tables = torch.full((len(lens), max(blocks) + 1), -1, dtype=torch.int32)  # (S, max_blocks)
    for i, n in enumerate(blocks):
        block_tables[i, :n] = torch.tensor(pages[:n])
        pages = pages[n:]
    context_lens = torch.tensor(lens, dtype=torch.int32)  # (S,)
    return k_cache, v_cache, block_tables.to(DEVICE), context_lens.to(DEVICE)


def _dense(cache: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
    """One sequence's cache, position by position: (length, kvh, hd) in fp32."""
    bs = cache.shape[1]
    return torch.stack([cache[int(table[p // bs]), p % bs] for p in range(length)]).float()


def _naive_attention(q, k, v, q_pos: torch.Tensor, scale: float) -> torch.Tensor:
    """q (n, H, hd), k/v (L, kvh, hd), query positions (n,) -> (n, H, hd), fp32 and causal."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # (L, H, hd)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,lhd->hnl", q.float(), k) * scale  # (H, n, L)
    visible = torch.arange(k.shape[0], device=q.device)[None, :] <= q_pos[:, None]  # (n, L)
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return torch.einsum("hnl,lhd->nhd", probs, v)


def _decode_inputs(case, dtype):
    block_size, kvh, group, hd, lens = case
    k_cache, v_cache, block_tables, context_lens = _paged_kv(lens, block_size, kvh, hd, dtype)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(len(lens), kvh * group, hd, generator=gen).to(dtype).to(DEVICE)  # (B, H, hd)
    return q, k_cache, v_cache, block_tables, context_lens, hd**-0.5


def _prefill_inputs(case, dtype):
    block_size, kvh, group, hd, seqs = case
    lens, q_lens = [c for c, _ in seqs], [n for _, n in seqs]
    k_cache, v_cache, block_tables, context_lens = _paged_kv(lens, block_size, kvh, hd, dtype)
    cu_seqlens_q = torch.tensor([0, *q_lens], dtype=torch.int32).cumsum(0).to(torch.int32)  # (S + 1,)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(sum(q_lens), kvh * group, hd, generator=gen).to(dtype).to(DEVICE)  # (Tq, H, hd)
    return q, k_cache, v_cache, block_tables, cu_seqlens_q.to(DEVICE), context_lens, hd**-0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", DECODE_CASES)
def test_decode_twin_matches_dense(case, dtype):
    q, k_cache, v_cache, block_tables, context_lens, scale = _decode_inputs(case, dtype)
    out = paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale)
    for i, n in enumerate(context_lens.tolist()):
        k, v = _dense(k_cache, block_tables[i], n), _dense(v_cache, block_tables[i], n)
        ref = _naive_attention(q[i : i + 1], k, v, torch.tensor([n - 1], device=q.device), scale)
        torch.testing.assert_close(out[i].float(), ref[0], **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", PREFILL_CASES)
def test_prefill_twin_matches_dense(case, dtype):
    q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale = _prefill_inputs(case, dtype)
    out = paged_attention_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale)
    cu = cu_seqlens_q.tolist()
    for i, n in enumerate(context_lens.tolist()):
        k, v = _dense(k_cache, block_tables[i], n), _dense(v_cache, block_tables[i], n)
        q_pos = torch.arange(n - (cu[i + 1] - cu[i]), n, device=q.device)
        ref = _naive_attention(q[cu[i] : cu[i + 1]], k, v, q_pos, scale)
        torch.testing.assert_close(out[cu[i] : cu[i + 1]].float(), ref, **TOL[dtype])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", DECODE_CASES)
def test_decode_triton_matches_twin(case, dtype):
    args = _decode_inputs(case, dtype)
    out = paged_attention_decode_fwd(*args)
    assert out.shape == args[0].shape and out.dtype == dtype
    torch.testing.assert_close(out, paged_attention_decode(*args), **TOL[dtype])


# head dims 64 and 128 take the vector path (pages of more than its 64-key chunks included), others the general one
CPU_DECODE_CASES = [
    *DECODE_CASES,
    (16, 3, 3, 64, [300, 1, 33, 129, 64]),
    (16, 1, 4, 64, [40, 7]),  # a pass of 3 query heads, then one alone
    (16, 2, 1, 64, [17]),
    (128, 2, 4, 128, [1, 200, 64, 65, 129]),
    (8, 1, 3, 128, [9]),
]


@needs_cc
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CPU_DECODE_CASES, ids=str)
def test_decode_cpu_matches_twin(case, dtype, threads):
    args = _decode_inputs(case, dtype)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = cpu_attention.paged_attention_decode(*args)
    finally:
        torch.set_num_threads(saved)
    assert out.shape == args[0].shape and out.dtype == dtype
    torch.testing.assert_close(out, paged_attention_decode(*args), **TOL[dtype])


@needs_cc
def test_decode_dispatch_uses_cpu_kernel(monkeypatch):
    calls = []
    real = cpu_attention.paged_attention_decode
    monkeypatch.setattr(cpu_attention, "paged_attention_decode", lambda *a: calls.append(1) or real(*a))
    args = _decode_inputs(DECODE_CASES[0], torch.float32)
    torch.testing.assert_close(ops.paged_attention_decode(*args), paged_attention_decode(*args), **TOL[torch.float32])
    assert calls == ([1] if DEVICE == "cpu" else [])


@needs_cc
@pytest.mark.parametrize(
    "spoil",
    [
        lambda a: (*a[:3], a[3].long(), *a[4:]),  # int64 block tables
        lambda a: (a[0], a[1].float(), *a[2:]),  # caches of mixed dtypes
        lambda a: (a[0][:, :, :8].contiguous(), *a[1:]),  # head dims disagree
        lambda a: (a[0], a[1].transpose(2, 3), a[2].transpose(2, 3), *a[3:]),  # caches not (kvh, hd) rows
    ],
    ids=["table-int64", "cache-dtype", "head-dim", "cache-layout"],
)
def test_decode_cpu_rejects_bad_inputs(spoil):
    args = _decode_inputs(DECODE_CASES[0], torch.bfloat16)
    with pytest.raises(AssertionError):
        cpu_attention.paged_attention_decode(*spoil(args))


# The CPU prefill sweep: SmolLM2's attention (9 heads over 3 kv heads) and a 1:1 one, head dim 64 on
# 16-token pages, times chunk shapes [(context length, query chunk length)]; the kernel tiles 16 queries.
CPU_PREFILL_CHUNKS = {
    "whole-prompt": [(130, 130)],
    "after-prefix": [(100, 36)],  # a page-aligned cached prefix, a chunk ending mid-page
    "mid-page": [(75, 30), (21, 5)],  # prefixes and chunks both ending mid-page
    "packed": [(37, 37), (5, 5), (150, 17), (33, 1), (16, 16)],
    "one-token": [(1, 1), (17, 1), (64, 1)],
}
CPU_PREFILL_CASES = [
    pytest.param((16, kvh, group, 64, seqs), id=f"{heads}-{name}")
    for heads, kvh, group in [("gqa-9:3", 3, 3), ("mha-2:2", 2, 1)]
    for name, seqs in CPU_PREFILL_CHUNKS.items()
] + [
    *(pytest.param(case, id=f"small-{i}") for i, case in enumerate(PREFILL_CASES)),  # odd head dims, 4-token pages
    pytest.param((16, 1, 16, 64, [(40, 23)]), id="group-16"),  # the most query heads per kv head
]


def _with_threads(threads: int, fn, *args):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(saved)


@needs_cc
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CPU_PREFILL_CASES)
def test_prefill_cpu_matches_twin(case, dtype, threads):
    args = _prefill_inputs(case, dtype)
    out = _with_threads(threads, cpu_attention.paged_attention_prefill, *args)
    assert out.shape == args[0].shape and out.dtype == dtype
    torch.testing.assert_close(out, paged_attention_prefill(*args), **TOL[dtype])


@needs_cc
def test_prefill_dispatch_uses_cpu_kernel(monkeypatch):
    calls = []
    real = cpu_attention.paged_attention_prefill
    monkeypatch.setattr(cpu_attention, "paged_attention_prefill", lambda *a: calls.append(1) or real(*a))
    args = _prefill_inputs(PREFILL_CASES[1], torch.float32)
    out = ops.paged_attention_prefill(*args)
    torch.testing.assert_close(out, paged_attention_prefill(*args), **TOL[torch.float32])
    assert calls == ([1] if DEVICE == "cpu" else [])


def _replace(t: torch.Tensor, index, value) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


# On PREFILL_CASES[0]: block size 4, 2 kv heads of dim 16, contexts [1, 4, 9], tables 4 blocks wide.
@needs_cc
@pytest.mark.parametrize(
    "spoil",
    [
        lambda a: (*a[:3], a[3].long(), *a[4:]),  # int64 block tables
        lambda a: (a[0], a[1].float(), *a[2:]),  # caches of mixed dtypes
        lambda a: (a[0][:, :, :8].contiguous(), *a[1:]),  # head dims disagree
        lambda a: (a[0], *(t.transpose(1, 2).contiguous().transpose(1, 2) for t in a[1:3]), *a[3:]),  # kvh-major
        lambda a: (a[0][:, :5].contiguous(), *a[1:]),  # 5 query heads over 2 kv heads
        lambda a: (a[0].flatten(1), *a[1:]),  # q not (Tq, H, hd)
        lambda a: (a[0].new_zeros(*a[0].shape[:2], 272), *(t.new_zeros(*t.shape[:3], 272) for t in a[1:3]), *a[3:]),
        lambda a: (*a[:4], a[4][:-1], *a[5:]),  # cu_seqlens_q one short
        lambda a: (*a[:4], _replace(a[4], -1, int(a[4][-1]) - 1), *a[5:]),  # cu_seqlens_q ends before Tq
        lambda a: (*a[:5], _replace(a[5], 1, 3), a[6]),  # a 4-query chunk in a 3-token context
        lambda a: (*a[:5], _replace(a[5], 2, 17), a[6]),  # context past the table's 16 tokens
        lambda a: (*a[:5], _replace(a[5], 0, 5), a[6]),  # context onto the table's -1 padding
        lambda a: (*a[:3], _replace(a[3], (2, 0), a[1].shape[0]), *a[4:]),  # a page past the pool
    ],
    ids=[
        "table-int64", "cache-dtype", "head-dim", "cache-layout", "heads-not-grouped", "q-rank", "head-dim-272",
        "cu-short", "cu-end", "chunk-past-context", "context-past-table", "page-missing", "page-past-pool",
    ],
)  # fmt: skip
def test_prefill_cpu_rejects_bad_inputs(spoil):
    args = _prefill_inputs(PREFILL_CASES[0], torch.bfloat16)
    with pytest.raises(ValueError):
        cpu_attention.paged_attention_prefill(*spoil(args))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", PREFILL_CASES)
def test_prefill_triton_matches_twin(case, dtype):
    args = _prefill_inputs(case, dtype)
    out = paged_attention_prefill_fwd(*args)
    assert out.shape == args[0].shape and out.dtype == dtype
    torch.testing.assert_close(out, paged_attention_prefill(*args), **TOL[dtype])


@needs_triton
@pytest.mark.parametrize(
    "spoil",
    [
        lambda a: (a[0].transpose(0, 1).contiguous().transpose(0, 1), *a[1:]),  # q not contiguous
        lambda a: (*a[:3], a[3].long(), *a[4:]),  # int64 block tables
        lambda a: (a[0], a[1].float(), *a[2:]),  # caches of mixed dtypes
        lambda a: (a[0][:, :, :8].contiguous(), *a[1:]),  # head dims disagree
    ],
    ids=["q-strided", "table-int64", "cache-dtype", "head-dim"],
)
def test_decode_rejects_bad_inputs(spoil):
    args = _decode_inputs(DECODE_CASES[0], torch.bfloat16)
    with pytest.raises(AssertionError):
        paged_attention_decode_fwd(*spoil(args))
