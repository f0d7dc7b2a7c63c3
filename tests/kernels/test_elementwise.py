"""RMSNorm (+ residual), rotary, the K/V store and silu(gate) * up in C against their torch twins: rotary and
the store bit for bit, the norm up to summation order; strided inputs as the model hands them (fused q/k/v columns,
cache pages inside the pool)."""

import pytest
import torch

from kernels import ops
from kernels.cpu import elementwise
from kernels.torch.kv_store import store_kv as store_twin
from kernels.torch.rms_norm import add_rms_norm as norm_twin
from kernels.torch.rotary import rotary_ as rotary_twin
from kernels.torch.silu_mul import silu_mul as silu_twin

needs_cc = pytest.mark.skipif(not elementwise.available(torch.zeros(1)), reason="no C compiler: the twins serve")
TOKENS = [1, 7, 130]  # one decode row, a few, past the threshold where tokens split across threads


@needs_cc
@pytest.mark.parametrize("T", TOKENS)
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm(T, with_residual):
    g = torch.Generator().manual_seed(T)
    x, w = torch.randn(T, 576, generator=g), torch.randn(576, generator=g)
    res = torch.randn(T, 576, generator=g) if with_residual else None
    x_twin = x.clone()
    want = norm_twin(x_twin, res, w, 1e-5)
    got = elementwise.add_rms_norm(x, res, w, 1e-5)
    assert torch.equal(x, x_twin)  # the residual add, in place, exact
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-6)


def _qkv(T: int, seed: int):
    """q, k as column views of one fused (T, 9*64 + 2*3*64) output, as server/model/fused.py makes them."""
    out = torch.randn(T, 9 * 64 + 6 * 64, generator=torch.Generator().manual_seed(seed))
    q, k, _ = out.split([9 * 64, 3 * 64, 3 * 64], dim=1)
    return out, q.view(T, 9, 64), k.view(T, 3, 64)


@needs_cc
@pytest.mark.parametrize("T", TOKENS)
def test_rotary_in_place_is_the_twin_bit_for_bit(T):
    g = torch.Generator().manual_seed(0)
    angles = torch.rand(T, 32, generator=g) * 100
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    out, q, k = _qkv(T, T)
    out_twin, q_twin, k_twin = _qkv(T, T)
    elementwise.rotary_(q, k, cos, sin)
    rotary_twin(q_twin, k_twin, cos, sin)
    assert torch.equal(out, out_twin)  # q and k rotated, v's columns untouched


@needs_cc
@pytest.mark.parametrize("T", TOKENS)
def test_store_kv_into_pool_pages(T):
    pages, bs, layers, kvh, hd = 12, 16, 3, 3, 64
    pool = torch.zeros(pages, layers, 2, bs, kvh, hd)  # the pool's layout: one page holds every layer's K and V
    pool_twin = pool.clone()
    _, _, k = _qkv(T, 1)
    v = torch.randn(T, kvh, hd)
    slots = torch.randperm(pages * bs)[:T]
    slots[::5] = -1  # skipped tokens
    store_kv = lambda p, fn: fn(k, v, p[:, 1, 0], p[:, 1, 1], slots)  # noqa: E731
    store_kv(pool, elementwise.store_kv)
    store_kv(pool_twin, store_twin)
    assert torch.equal(pool, pool_twin)


@needs_cc
def test_store_kv_refuses_a_slot_past_the_pages():
    cache = torch.zeros(2, 16, 1, 8)
    k = torch.ones(1, 1, 8)
    with pytest.raises(IndexError):
        elementwise.store_kv(k, k, cache, cache.clone(), torch.tensor([32]))
    assert not cache.any()


@pytest.mark.parametrize("T", [1, 5])
def test_ops_dispatch_matches_the_twins(T):
    x, w = torch.randn(T, 64), torch.randn(64)
    res = torch.randn(T, 64)
    x2 = x.clone()
    torch.testing.assert_close(ops.add_rms_norm(x, res, w, 1e-6), norm_twin(x2, res, w, 1e-6), rtol=2e-6, atol=1e-6)
    bf = x.to(torch.bfloat16)  # not fp32: the twin serves
    torch.testing.assert_close(ops.add_rms_norm(bf, None, w.to(torch.bfloat16), 1e-6),
                               norm_twin(bf.clone(), None, w.to(torch.bfloat16), 1e-6))  # fmt: skip


@needs_cc
@pytest.mark.parametrize("T", TOKENS)
def test_silu_mul_on_the_fused_gate_up_columns(T):
    gu = torch.randn(T, 2 * 1536, generator=torch.Generator().manual_seed(T)) * 4  # (T, 2I), saturating values too
    gate, up = gu.split(1536, dim=1)
    torch.testing.assert_close(elementwise.silu_mul(gate, up), silu_twin(gate, up), rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(ops.silu_mul(gate, up), silu_twin(gate, up), rtol=2e-6, atol=1e-6)
