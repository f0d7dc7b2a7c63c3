"""The DoRA path of the batched kernels: base + LoRA delta, then the per-row, per-channel DoRA rescale,
for the torch twin, the CPU C kernel and Triton, against the row-by-row reference.

Sweeps: dtype x (in, out) x rank x batch x mix of DoRA / LoRA / base rows. The scale vectors sit in
the same NaN-gapped pool as the factors (tests/kernels/test_lora.py), so a read past a vector's end
or a rescale of a row that should be left alone shows.
"""

import random

import pytest
import torch

from kernels.cpu import dora as cpu_dora
from kernels.lora_reference import dora_rescale_reference, lora_reference
from kernels.torch.dora import dora_rescale
from kernels.torch.lora import lora_apply
from tests.kernels.test_lora import DTYPES, TOL, _case
from tests.kernels.triton_support import DEVICE, triton_skip  # sets TRITON_INTERPRET before kernels.triton loads

try:
    from kernels.triton.dora_rescale import dora_rescale_fwd
    from kernels.triton.lora_expand import sgmv_expand_fwd
    from kernels.triton.lora_shrink import sgmv_shrink_fwd

    _TRITON_ERROR = None
except ImportError as e:
    _TRITON_ERROR = e

needs_triton = triton_skip(_TRITON_ERROR)
needs_cc = pytest.mark.skipif(not cpu_dora.available(torch.zeros(1)), reason="no C compiler: the CPU kernel is off")

SIZES = [(64, 64), (64, 192), (160, 64)]  # (in, out)
RANKS = ["1", "8", "64", "mixed"]
BATCHES = [1, 5, 33]
# bf16: test_lora's tolerance scaled by the largest scale (1.5): the rescale multiplies the rounding error too
TOL_DORA = {**TOL, torch.bfloat16: dict(atol=5e-2, rtol=5e-2)}
MIXES = ["all-dora", "half-dora", "no-dora"]  # which slots carry a scale; rows of the others stay plain LoRA


def _dora_case(dtype, size, rank, T, mix, seed=0):
    """test_lora's case, plus a scale vector (out,) per DoRA slot appended to the pool behind a NaN gap."""
    x, out0, pool, a_off, b_off, info = _case(dtype, size, rank, T, "uniform", seed)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    d_out, num_slots = size[1], a_off.shape[0]
    dora = {"all-dora": set(range(num_slots)), "no-dora": set(),
            "half-dora": {s for s in range(num_slots) if rng.random() < 0.5}}[mix]
    chunks, offsets, pos = [pool.cpu().float()], [], pool.shape[0]
    for s in range(num_slots):
        if s not in dora:
            offsets.append(-1)
            continue
        gap = rng.randrange(1, 30)
        chunks += [torch.full((gap,), float("nan")), torch.rand(d_out, generator=gen) + 0.5]
        offsets.append(pos + gap)
        pos += gap + d_out
    chunks.append(torch.full((5,), float("nan")))
    pool = torch.cat(chunks).to(dtype).to(DEVICE)
    scale_off = torch.tensor(offsets, dtype=torch.int64, device=DEVICE)
    return x, out0, pool, a_off, b_off, scale_off, info


def _reference(x, out0, pool, a_off, b_off, scale_off, info):
    lora = out0.float().cpu() + lora_reference(x, pool, a_off, b_off, info, out0.shape[1])
    return dora_rescale_reference(lora, pool, scale_off, info)


def _check(got, args):
    x, out0, pool, a_off, b_off, scale_off, info = args
    torch.testing.assert_close(got.float().cpu(), _reference(*args), **TOL_DORA[x.dtype])
    base = (info.row_slots < 0).to(got.device)
    assert torch.equal(got[base], out0[base]), "base-only rows were touched"
    assert torch.isfinite(got).all()


def _with(apply, rescale):
    def run(args):
        x, out0, pool, a_off, b_off, scale_off, info = args
        out = out0.clone()
        apply(x, out, pool, a_off, b_off, info)
        rescale(out, pool, scale_off, info)
        return out

    return run


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


sweep = pytest.mark.parametrize("dtype, size, rank, T, mix", [
    (d, s, r, t, m) for d in DTYPES for s in SIZES for r in RANKS for t in BATCHES for m in MIXES
], ids=str)


@sweep
def test_twin_sweep(dtype, size, rank, T, mix):
    args = _dora_case(dtype, size, rank, T, mix)
    _check(_with(lora_apply, dora_rescale)(args), args)


@needs_cc
@sweep
def test_cpu_kernel_sweep(dtype, size, rank, T, mix):
    from kernels.cpu.lora import lora_apply as cpu_apply

    args = _dora_case(dtype, size, rank, T, mix)
    _check(_with(cpu_apply, cpu_dora.dora_rescale)(args), args)


@needs_cc
def test_cpu_kernel_reads_strided_offsets():
    """The runner passes scale_offsets[:, layer, module], a strided view; the C kernel must follow its stride."""
    x, out0, pool, a_off, b_off, scale_off, info = _dora_case(torch.float32, (64, 64), "8", 5, "half-dora")
    table = torch.stack([torch.full_like(scale_off, -7), scale_off], dim=1)  # (slots, 2)
    got, want = out0.clone(), out0.clone()
    cpu_dora.dora_rescale(got, pool, table[:, 1], info)
    dora_rescale(want, pool, scale_off, info)
    assert torch.equal(got, want)


TRITON_CASES = [  # (in, out), rank, batch, mix: both grid edges (out < and > one 128-wide tile)
    ((64, 64), "1", 5, "all-dora"),
    ((64, 192), "mixed", 33, "half-dora"),
    ((160, 64), "8", 1, "all-dora"),
    ((64, 192), "64", 5, "no-dora"),
    ((160, 192), "mixed", 33, "all-dora"),
]


@needs_triton
@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_sweep(dtype, case):
    def apply(x, out, pool, a_off, b_off, info):
        sgmv_expand_fwd(sgmv_shrink_fwd(x, pool, a_off, info), out, pool, b_off, info)

    args = _dora_case(dtype, *case, seed=2)
    _check(_with(apply, dora_rescale_fwd)(args), args)
