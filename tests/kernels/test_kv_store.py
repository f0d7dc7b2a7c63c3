"""store_kv: the torch twin against a slot-by-slot reference, the Triton kernel against the twin.

Triton runs under its interpreter on CPU tensors unless TRITON_INTERPRET=0 is set on a CUDA machine.
"""

import pytest
import torch

from kernels.torch import store_kv
from tests.kernels.triton_support import DEVICE, triton_skip  # sets TRITON_INTERPRET before kernels.triton loads

try:
    from kernels.triton.kv_store import store_kv_fwd

    _TRITON_ERROR = None
except ImportError as e:
    _TRITON_ERROR = e

needs_triton = triton_skip(_TRITON_ERROR)

NUM_LAYERS, LAYER, NUM_PAGES = 3, 1, 6
# (block_size, kv heads, head dim, query heads of the fused qkv that k and v are sliced from)
CASES = [(4, 1, 16, 2), (16, 3, 24, 6), (4, 2, 32, 2)]


def _inputs(case, dtype, num_tokens: int = 9, num_skipped: int = 2):
    """A pool, k/v sliced out of a fused qkv (strided), distinct shuffled slots, a few negative."""
    block_size, kvh, hd, H = case
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(NUM_PAGES * NUM_LAYERS * 2 * block_size * kvh * hd, generator=gen).to(dtype).to(DEVICE)
    qkv = torch.randn(num_tokens, H + 2 * kvh, hd, generator=gen).to(dtype).to(DEVICE)  # (T, H + 2kvh, hd)
    k, v = qkv[:, H : H + kvh], qkv[:, H + kvh :]  # (T, kvh, hd), not contiguous
    slots = torch.randperm(NUM_PAGES * block_size, generator=gen)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=gen)[:num_skipped]] = -1
    return pool, k, v, slots.to(DEVICE)


def _caches(pool: torch.Tensor, case):
    block_size, kvh, hd, _ = case
    layers = pool.view(NUM_PAGES, NUM_LAYERS, 2, block_size, kvh, hd)
    return layers[:, LAYER, 0], layers[:, LAYER, 1]  # (NUM_PAGES, block_size, kvh, hd) each, strided


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_twin_writes_exactly_the_slots(case, dtype):
    pool, k, v, slots = _inputs(case, dtype)
    expected = pool.clone().view(NUM_PAGES, NUM_LAYERS, 2, case[0], *k.shape[1:])
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            expected[slot // case[0], LAYER, 0, slot % case[0]] = k[t]
            expected[slot // case[0], LAYER, 1, slot % case[0]] = v[t]
    store_kv(k, v, *_caches(pool, case), slots)
    assert torch.equal(pool, expected.flatten())


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_twin(case, dtype):
    pool, k, v, slots = _inputs(case, dtype)
    twin_pool = pool.clone()
    store_kv(k, v, *_caches(twin_pool, case), slots)
    store_kv_fwd(k, v, *_caches(pool, case), slots)
    assert torch.equal(pool, twin_pool)


@needs_triton
def test_triton_rejects_int32_slots():
    case = CASES[0]
    pool, k, v, slots = _inputs(case, torch.float32)
    with pytest.raises(AssertionError):
        store_kv_fwd(k, v, *_caches(pool, case), slots.int())
