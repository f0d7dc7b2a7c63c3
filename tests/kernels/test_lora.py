"""LoRA shrink/expand: the torch twins, the CPU C kernel and the Triton SGMV/BGMV kernels against the
row-by-row reference.

Punica-style sweeps: dtype x (in, out) x rank x batch x adapter popularity. Adapter factors sit at
shuffled, unaligned pool offsets with NaN between them, so a read outside a slot's own factors
(past its rank, into a neighbour) poisons the output instead of passing unnoticed.
Triton runs under its interpreter on CPU tensors unless TRITON_INTERPRET=0 is set on a CUDA machine.
"""

import random

import pytest
import torch

from kernels import ops
from kernels.cpu import lora as cpu_lora
from kernels.lora_batch import LoRABatchInfo, segments_from_row_slots
from kernels.lora_reference import lora_reference, shrink_reference
from kernels.torch.lora import lora_apply, lora_expand, lora_shrink
from tests.kernels.triton_support import DEVICE, triton_skip  # sets TRITON_INTERPRET before kernels.triton loads

try:
    from kernels.triton.lora_expand import bgmv_expand_fwd, sgmv_expand_fwd
    from kernels.triton.lora_shrink import bgmv_shrink_fwd, sgmv_shrink_fwd

    _TRITON_ERROR = None
except ImportError as e:
    _TRITON_ERROR = e

needs_triton = triton_skip(_TRITON_ERROR)
needs_cc = pytest.mark.skipif(not cpu_lora.available(torch.zeros(1)), reason="no C compiler: the CPU kernel is off")

# bf16: on hosts with native bf16 GEMMs (AVX512-BF16, AMX) the twin multiplies in bf16 and rounds the
# shrink's output before the expand; with scalings up to 4 one element in thousands lands ~10 bf16 ulps
# from the fp32 reference (seen: 0.074 on a value of 1.3)
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=8e-2, rtol=8e-2)}
DTYPES = [torch.float32, torch.bfloat16]
SIZES = [(64, 64), (64, 192), (160, 64)]  # (in, out)
RANKS = ["1", "8", "16", "64", "mixed"]
MIXED_RANKS = [1, 5, 8, 16, 24, 64]  # non-powers of two exercise the rank masks
BATCHES = [1, 5, 33]
POPULARITY = ["distinct", "uniform", "zipf", "identical", "skewed"]
NUM_SLOTS = 6  # adapters resident in the pool, beyond one per row for "distinct"


def _row_slots(popularity: str, T: int, num_slots: int, rng: random.Random) -> list[int]:
    if popularity == "distinct":
        slots = rng.sample(range(num_slots), T)
    elif popularity == "uniform":
        slots = [rng.randrange(num_slots) for _ in range(T)]
    elif popularity == "zipf":
        slots = rng.choices(range(num_slots), weights=[1 / (k + 1) for k in range(num_slots)], k=T)
    elif popularity == "identical":
        slots = [2] * T
    else:  # skewed: one hot slot, a few rare ones
        slots = [3 if rng.random() < 0.8 else rng.choice([0, 1, 5]) for _ in range(T)]
    if T > 1:  # some base-only rows, scattered
        slots = [-1 if t % 4 == 3 else s for t, s in enumerate(slots)]
    return slots


def _pool(ranks: list[int], d_in: int, d_out: int, dtype, gen: torch.Generator, absent: tuple[int, ...] = ()):
    """Every slot's A (r, in) and B (out, r) at shuffled offsets, NaN gaps of random length between."""
    mats = [(kind, s) for s in range(len(ranks)) for kind in "ab"]
    chunks, offsets, pos = [], {}, 0
    for i in torch.randperm(len(mats), generator=gen).tolist():
        kind, s = mats[i]
        gap = int(torch.randint(1, 40, (1,), generator=gen))
        chunks.append(torch.full((gap,), float("nan")))
        pos += gap
        offsets[kind, s] = pos
        r = ranks[s]
        fan_in = d_in if kind == "a" else r
        w = torch.randn(r * d_in if kind == "a" else d_out * r, generator=gen) / fan_in**0.5
        chunks.append(w)
        pos += w.numel()
    chunks.append(torch.full((7,), float("nan")))
    # The pool is a slice of a larger buffer, as when it shares one allocation with the KV pages.
    buffer = torch.cat([torch.full((13,), float("nan")), *chunks]).to(dtype).to(DEVICE)
    pool = buffer[13:]  # (N,)
    a_off = [-1 if s in absent else offsets["a", s] for s in range(len(ranks))]
    b_off = [-1 if s in absent else offsets["b", s] for s in range(len(ranks))]
    return pool, torch.tensor(a_off, device=DEVICE), torch.tensor(b_off, device=DEVICE)


def _case(dtype, size, rank, T, popularity, seed=0, absent=()):
    d_in, d_out = size
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    num_slots = max(T, NUM_SLOTS)
    ranks = [int(rank)] * num_slots if rank != "mixed" else [MIXED_RANKS[s % 6] for s in range(num_slots)]
    rng.shuffle(ranks)
    scalings = [rng.uniform(0.25, 4.0) for _ in range(num_slots)]
    pool, a_off, b_off = _pool(ranks, d_in, d_out, dtype, gen, absent)
    info = LoRABatchInfo.from_row_slots(_row_slots(popularity, T, num_slots, rng), ranks, scalings, DEVICE)
    x = torch.randn(T, d_in, generator=gen).to(dtype).to(DEVICE)  # (T, in)
    out0 = torch.randn(T, d_out, generator=gen).to(dtype).to(DEVICE)  # (T, out), the base layer's output
    return x, out0, pool, a_off, b_off, info


def _check(x, out0, out, y, pool, a_off, b_off, info):
    """y (shrink) and out (out0 after expand) against the reference; base-only rows bit-identical."""
    dtype = x.dtype
    assert y.shape == (x.shape[0], info.max_rank) and y.dtype == dtype
    torch.testing.assert_close(y.float().cpu(), shrink_reference(x, pool, a_off, info), **TOL[dtype])
    ref = out0.float().cpu() + lora_reference(x, pool, a_off, b_off, info, out.shape[1])
    torch.testing.assert_close(out.float().cpu(), ref, **TOL[dtype])
    base = info.row_slots < 0
    assert torch.equal(out[base], out0[base]), "base-only rows were touched"
    assert torch.isfinite(out).all()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matmuls gain nothing from threads, and on a busy shared host OpenMP waits on the other core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _two_pass(shrink, expand):
    """A runner: out += delta via shrink then expand; returns the shrink output."""

    def run(x, out, pool, a_off, b_off, info):
        y = shrink(x, pool, a_off, info)
        expand(y, out, pool, b_off, info)
        return y

    return run


def _fused(x, out, pool, a_off, b_off, info):
    lora_apply(x, out, pool, a_off, b_off, info)
    return lora_shrink(x, pool, a_off, info)


def _run(runner, args):
    x, out0, pool, a_off, b_off, info = args
    out = out0.clone()
    y = runner(x, out, pool, a_off, b_off, info)
    _check(x, out0, out, y, pool, a_off, b_off, info)
    return out


def _cpu(small_rows: int):
    """The C kernel for groups of up to `small_rows` rows, GEMMs for the rest; y from the twin's shrink."""

    def run(x, out, pool, a_off, b_off, info):
        saved, cpu_lora.SMALL_GROUP_ROWS = cpu_lora.SMALL_GROUP_ROWS, small_rows
        try:
            cpu_lora.lora_apply(x, out, pool, a_off, b_off, info)
        finally:
            cpu_lora.SMALL_GROUP_ROWS = saved
        return lora_shrink(x, pool, a_off, info)

    return run


@pytest.mark.parametrize("popularity", POPULARITY)
@pytest.mark.parametrize("T", BATCHES)
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_twin_sweep(dtype, size, rank, T, popularity):
    args = _case(dtype, size, rank, T, popularity)
    _run(_two_pass(lora_shrink, lora_expand), args)
    _run(_fused, args)


@needs_cc
@pytest.mark.parametrize("small_rows", [0, 2, 10**6], ids=["all-gemm", "split", "all-c"])
@pytest.mark.parametrize("popularity", POPULARITY)
@pytest.mark.parametrize("T", BATCHES)
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_kernel_sweep(dtype, size, rank, T, popularity, small_rows):
    _run(_cpu(small_rows), _case(dtype, size, rank, T, popularity))


# (in, out), rank, batch, popularity: every popularity, every rank kind, both grid edges.
TRITON_CASES = [
    ((64, 64), "1", 5, "distinct"),
    ((64, 192), "mixed", 33, "zipf"),
    ((160, 64), "16", 5, "uniform"),
    ((64, 64), "64", 33, "identical"),
    ((160, 192), "mixed", 33, "skewed"),
    ((64, 64), "8", 1, "uniform"),
    ((64, 64), "128", 5, "zipf"),  # past one 64-wide rank tile
]


@needs_triton
@pytest.mark.parametrize("variant", ["sgmv", "bgmv"])
@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_sweep(dtype, case, variant):
    size, rank, T, popularity = case
    kernels = {"sgmv": (sgmv_shrink_fwd, sgmv_expand_fwd), "bgmv": (bgmv_shrink_fwd, bgmv_expand_fwd)}
    _run(_two_pass(*kernels[variant]), _case(dtype, size, rank, T, popularity, seed=1))


def _runners():
    runners = [
        pytest.param(_two_pass(lora_shrink, lora_expand), id="twin"),
        pytest.param(_fused, id="twin-fused"),
        pytest.param(_two_pass(ops.lora_shrink, ops.lora_expand), id="ops"),
        pytest.param(_cpu(cpu_lora.SMALL_GROUP_ROWS), id="cpu", marks=needs_cc),
        pytest.param(_cpu(1), id="cpu-split", marks=needs_cc),
    ]
    if not needs_triton.args[0]:  # triton runnable here
        runners += [
            pytest.param(_two_pass(sgmv_shrink_fwd, sgmv_expand_fwd), id="sgmv"),
            pytest.param(_two_pass(bgmv_shrink_fwd, bgmv_expand_fwd), id="bgmv"),
        ]
    return runners


@pytest.mark.parametrize("runner", _runners())
@pytest.mark.parametrize("row_slots", [[0, 0, 2, 2, 1, -1, 3], [2, 0, 2, 1, -1, 0, 3]], ids=["grouped", "interleaved"])
def test_untargeted_module_leaves_rows_alone(runner, row_slots):
    # Slot 2 does not target this (layer, module): offset -1, so its rows behave as base-only.
    ranks, scalings = [3, 16, 7, 64], [0.5, 2.0, 1.5, 1.0]
    pool, a_off, b_off = _pool(ranks, 48, 80, torch.float32, torch.Generator().manual_seed(4), absent=(2,))
    info = LoRABatchInfo.from_row_slots(row_slots, ranks, scalings, DEVICE)
    x = torch.randn(len(row_slots), 48, device=DEVICE)
    out0 = torch.randn(len(row_slots), 80, device=DEVICE)
    out = _run(runner, (x, out0, pool, a_off, b_off, info))
    untouched = torch.tensor([s in (2, -1) for s in row_slots], device=DEVICE)
    assert torch.equal(out[untouched], out0[untouched])
    assert not torch.equal(out[~untouched], out0[~untouched])


@pytest.mark.parametrize("runner", _runners())
@pytest.mark.parametrize(
    "row_slots",
    [[0, 0, 1, 1, 1, -1, 2], [0, 1, 0, -1, 1, 2, 0, 0], [-1, -1], []],
    ids=["grouped", "interleaved", "all-base", "empty"],
)
def test_grouped_and_interleaved_rows(runner, row_slots):
    ranks, scalings = [3, 16, 7], [0.5, 2.0, 1.5]
    pool, a_off, b_off = _pool(ranks, 48, 80, torch.float32, torch.Generator().manual_seed(5))
    info = LoRABatchInfo.from_row_slots(row_slots, ranks, scalings, DEVICE)
    x = torch.randn(len(row_slots), 48, device=DEVICE)
    out0 = torch.randn(len(row_slots), 80, device=DEVICE)
    _run(runner, (x, out0, pool, a_off, b_off, info))


def test_row_groups_gather_only_when_a_slot_repeats():
    grouped = LoRABatchInfo.from_row_slots([0, 0, 1, -1, 2], [4, 8, 2], [1.0, 0.5, 2.0])
    assert grouped.groups.order is None
    assert grouped.groups.spans == [(0, 2, 4, 1.0), (2, 3, 8, 0.5), (4, 5, 2, 2.0)]
    assert grouped.groups.scales[:, 0].tolist() == [1.0, 1.0, 0.5, 0.0, 2.0]
    interleaved = LoRABatchInfo.from_row_slots([1, 0, -1, 1], [4, 8], [1.0, 0.5])
    assert interleaved.groups.order.tolist() == [1, 0, 3]
    assert interleaved.groups.slots.tolist() == [0, 1]
    assert interleaved.groups.spans == [(0, 1, 4, 1.0), (1, 3, 8, 0.5)]
    assert interleaved.groups.scales[:, 0].tolist() == [1.0, 0.5, 0.5]


@pytest.mark.parametrize("runner", _runners())
def test_weights_read_from_shuffled_pool_offsets(runner):
    args = _case(torch.float32, (64, 192), "mixed", 33, "uniform", seed=7)
    pool, a_off, b_off = args[2:5]
    offsets = torch.cat([a_off, b_off])
    assert not torch.equal(offsets, offsets.sort().values), "offsets should not follow slot order"
    assert torch.isnan(pool).sum() > 2 * offsets.numel(), "garbage should sit between the factors"
    assert pool.storage_offset() > 0, "the pool should be a view into a larger buffer"
    _run(runner, args)


@pytest.mark.parametrize(("T", "popularity", "decode_only"), [(5, "distinct", True), (33, "identical", False)])
def test_ops_apply_matches_reference(T, popularity, decode_only):
    # The twin on CPU; on CUDA the BGMV kernels for the decode-only batch, SGMV for the other.
    args = _case(torch.float32, (64, 64), "mixed", T, popularity, seed=2)
    assert args[5].decode_only == decode_only

    def run(x, out, pool, a_off, b_off, info):
        ops.lora_apply(x, out, pool, a_off, b_off, info)
        return ops.lora_shrink(x, pool, a_off, info)

    _run(run, args)


@pytest.mark.parametrize(
    ("row_slots", "indptr", "slots"),
    [
        ([], [0], []),
        ([4], [0, 1], [4]),
        ([3, 3, -1, 3, 2, 2], [0, 2, 3, 4, 6], [3, -1, 3, 2]),
        ([-1, -1, 0], [0, 2, 3], [-1, 0]),
    ],
)
def test_segments_from_row_slots(row_slots, indptr, slots):
    assert segments_from_row_slots(row_slots) == (indptr, slots)


def test_batch_info_fields():
    info = LoRABatchInfo.from_row_slots([1, 1, -1, 0, 1], [4, 16, 64], [1.0, 2.0, 3.0])
    assert info.seg_indptr.tolist() == [0, 2, 3, 4, 5] and info.seg_slots.tolist() == [1, -1, 0, 1]
    assert info.max_rank == 16 and info.max_seg_len == 2 and not info.decode_only
    assert LoRABatchInfo.from_row_slots([0, 1, 0, -1], [4, 8], [1.0, 1.0]).decode_only
    assert LoRABatchInfo.from_row_slots([-1], [4], [1.0]).max_rank == 1
    assert LoRABatchInfo.from_row_slots([0], [4], [1.0], max_rank=64).max_rank == 64
    with pytest.raises(AssertionError):
        LoRABatchInfo.from_row_slots([0, 1], [4, 32], [1.0, 1.0], max_rank=16)


@needs_triton
@pytest.mark.parametrize(
    "spoil",
    [
        lambda x, p, a, i: (x, p, a.int(), i),  # int32 offsets
        lambda x, p, a, i: (x, p.float(), a, i),  # pool dtype differs from x
        lambda x, p, a, i: (x.t().contiguous().t(), p, a, i),  # x rows not contiguous
        lambda x, p, a, i: (x[:-1], p, a, i),  # fewer rows than row slots
        lambda x, p, a, i: (x, p.view(-1, 1), a, i),  # pool not flat
    ],
    ids=["offsets-int32", "pool-dtype", "x-strided", "rows", "pool-2d"],
)
@pytest.mark.parametrize("shrink", [pytest.param("sgmv"), pytest.param("bgmv")])
def test_shrink_rejects_bad_inputs(spoil, shrink):
    x, _, pool, a_off, _, info = _case(torch.bfloat16, (64, 64), "8", 5, "uniform")
    fwd = sgmv_shrink_fwd if shrink == "sgmv" else bgmv_shrink_fwd
    with pytest.raises(AssertionError):
        fwd(*spoil(x, pool, a_off, info))


@pytest.mark.parametrize("runner", _runners())
def test_mixture_entries_sum_weighted_deltas(runner):
    """Rows carrying k (adapter, weight) pairs: each row gets sum_k w_k * scale_k * B_k A_k x."""
    ranks, scalings = [3, 16, 7], [0.5, 2.0, 1.5]
    pool, a_off, b_off = _pool(ranks, 48, 80, torch.float32, torch.Generator().manual_seed(6))
    mixes = [[(0, 0.7), (2, 0.3)], [], [(1, 1.0)], [(0, -0.5), (1, 0.25), (2, 2.0)], [(0, 0.7), (2, 0.3)]]
    pairs = sorted({p for m in mixes for p in m})  # a slot per (adapter, weight), as the runner builds them
    entries = sorted((pairs.index(p), row) for row, m in enumerate(mixes) for p in m)
    info = LoRABatchInfo.from_row_slots(
        [s for s, _ in entries],
        [ranks[a] for a, _ in pairs],
        [scalings[a] * w for a, w in pairs],
        DEVICE,
        entry_rows=[r for _, r in entries],
    )
    a_slots = torch.tensor([a for a, _ in pairs], device=DEVICE)
    x = torch.randn(len(mixes), 48, device=DEVICE)
    out0 = torch.randn(len(mixes), 80, device=DEVICE)
    expect = out0.clone().cpu()
    for row, m in enumerate(mixes):  # one single-adapter reference call per pair, summed
        for adapter, w in m:
            single = LoRABatchInfo.from_row_slots([adapter], ranks, scalings)
            expect[row] += w * lora_reference(x[row : row + 1], pool, a_off, b_off, single, 80)[0]
    out = out0.clone()
    ops.apply_per_entry(lambda *args: runner(*args), x, out, pool, a_off[a_slots], b_off[a_slots], info)
    torch.testing.assert_close(out.cpu(), expect, **TOL[torch.float32])
    assert torch.equal(out[1], out0[1]), "the base-only row was touched"
    if DEVICE == "cpu":  # the dispatch takes the same path
        out = out0.clone()
        ops.lora_apply(x, out, pool, a_off[a_slots], b_off[a_slots], info)
        torch.testing.assert_close(out.cpu(), expect, **TOL[torch.float32])


@needs_cc
def test_ops_serves_cpu_rows_with_the_c_kernel(monkeypatch):
    calls = []
    real = cpu_lora.lora_apply
    monkeypatch.setattr(cpu_lora, "lora_apply", lambda *a: calls.append(1) or real(*a))
    args = _case(torch.float32, (64, 64), "mixed", 5, "distinct", seed=3)

    def run(x, out, pool, a_off, b_off, info):
        ops.lora_apply(x, out, pool, a_off, b_off, info)
        return lora_shrink(x, pool, a_off, info)

    _run(run, args)
    assert calls == ([1] if DEVICE == "cpu" else [])
