"""Per-token Arrow: the torch twin, the CPU path (C kernel entries) and the Triton fused score + top-k +
expand against a row-by-row reference of PEFT's ArrowLoraLinearLayer math.

Sweep: dtype x (in, out) x candidates per row x top_k x routed rows x PEFT's rule or calibrated levels
(mixed=base: where only some of a row's candidates target the projection, |cos| / level and the base
competing at 1), mixed ranks and scalings, some candidates that do not target the projection (they
must not compete), rows with fewer candidates than others, base rows in between. Prototypes sit in the pool
next to the factors, NaN between.
Triton runs under its interpreter on CPU tensors unless TRITON_INTERPRET=0 is set on a CUDA machine.
"""

import random

import pytest
import torch

from kernels import ops
from kernels.arrow_rows import ArrowRows
from kernels.cpu import arrow as cpu_arrow
from kernels.cpu import lora as cpu_lora
from kernels.torch.arrow import arrow_apply, arrow_expand, arrow_weights, entry_weights
from kernels.torch.lora import lora_apply, lora_shrink
from tests.kernels.triton_support import DEVICE, triton_skip  # sets TRITON_INTERPRET before kernels.triton loads

try:
    from kernels.triton.arrow_expand import arrow_expand_fwd
    from kernels.triton.lora_shrink import sgmv_shrink_fwd

    _TRITON_ERROR = None
except ImportError as e:
    _TRITON_ERROR = e

needs_triton = triton_skip(_TRITON_ERROR)
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=8e-2, rtol=8e-2)}
RANKS = [1, 5, 8, 16, 24]
NUM_SLOTS = 7
ABSENT = 6  # this slot does not target the projection: no A, B or prototype here


def _case(dtype, size, C, top_k, R, seed=0, levels=False):
    d_in, d_out = size
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    ranks = [RANKS[s % len(RANKS)] for s in range(NUM_SLOTS)]
    scalings = [rng.uniform(0.25, 4.0) for _ in range(NUM_SLOTS)]
    chunks, offs, pos = [], {}, 0
    for s in range(NUM_SLOTS):
        for kind, n in (("a", ranks[s] * d_in), ("b", d_out * ranks[s]), ("v", d_in)):
            gap = rng.randrange(1, 30)
            chunks += [torch.full((gap,), float("nan")), torch.randn(n, generator=gen) / d_in**0.25]
            offs[kind, s] = pos + gap
            pos += gap + n
    pool = torch.cat([*chunks, torch.full((5,), float("nan"))]).to(dtype).to(DEVICE)
    table = {k: torch.tensor([-1 if s == ABSENT else offs[k, s] for s in range(NUM_SLOTS)], device=DEVICE)
             for k in "abv"}
    T = 2 * R + 1
    rows = sorted(rng.sample(range(T), R))  # the other rows are base rows
    cands = []
    for i in range(R):
        n = C if i % 3 else max(1, C - 1)  # some rows have fewer candidates
        cands.append(rng.sample(range(NUM_SLOTS), n))
    lv = [[rng.uniform(0.03, 0.3) for _ in c] if levels and i % 5 else None for i, c in enumerate(cands)]
    arrow = ArrowRows.build(cands, rows, [min(top_k, len(c)) if i % 4 == 3 else top_k for i, c in enumerate(cands)],
                            [rng.choice([0.05, 0.5, 2.0]) for _ in range(R)], ranks, scalings, DEVICE, lv)
    x = torch.randn(T, d_in, generator=gen).to(dtype).to(DEVICE)  # (T, in)
    out0 = torch.randn(T, d_out, generator=gen).to(dtype).to(DEVICE)  # (T, out)
    return x, out0, pool, table, arrow, (ranks, scalings)


def _reference(x, out0, pool, table, arrow, meta):
    """PEFT's ArrowLoraLinearLayer, one routed row at a time, dense, fp32; with levels, where only some of
    the row's candidates target the projection, |cos| / level and a zero-delta base at 1 compete."""
    ranks, scalings = meta
    p, x, out = pool.float().cpu(), x.float().cpu(), out0.float().cpu().clone()
    d_in, d_out = x.shape[1], out.shape[1]
    off = {k: t.tolist() for k, t in table.items()}
    for r, (row, slots) in enumerate(zip(arrow.rows.tolist(), arrow.cand_slots.tolist(), strict=True)):
        real = [(s, lv) for s, lv in zip(slots, arrow.levels[r].tolist(), strict=True) if s >= 0]
        cands = [(s, lv) for s, lv in real if off["v"][s] >= 0]
        if not cands:
            continue
        xr = x[row]
        scores = torch.stack([(xr @ p[off["v"][s] : off["v"][s] + d_in]).abs() for s, _ in cands])
        if real[0][1] > 0 and len(cands) < len(real):
            scores = torch.cat([scores / (xr.norm() * torch.tensor([lv for _, lv in cands])), torch.ones(1)])
        k = min(int(arrow.top_k[r]), len(scores))
        top, at = scores.topk(k)
        w = (top * float(arrow.inv_temperature[r])).softmax(0)
        for wi, i in zip(w.tolist(), at.tolist(), strict=True):
            if i == len(cands):  # the base: no delta
                continue
            s, rank = cands[i][0], ranks[cands[i][0]]
            a = p[off["a"][s] : off["a"][s] + rank * d_in].view(rank, d_in)
            b = p[off["b"][s] : off["b"][s] + d_out * rank].view(d_out, rank)
            out[row] += wi * scalings[s] * (b @ (a @ xr))
    return out


def _column(offsets: torch.Tensor) -> torch.Tensor:
    """The offsets as the forward hands them: one (layer, module) column of a (slots, L, M) table, strided."""
    table = torch.full((offsets.shape[0], 3, 4), 10**9, dtype=offsets.dtype, device=offsets.device)  # junk around
    table[:, 1, 2] = offsets
    return table[:, 1, 2]


def _check(out, ref, out0, arrow, dtype):
    torch.testing.assert_close(out.float().cpu(), ref, **TOL[dtype])
    base = torch.ones(out.shape[0], dtype=torch.bool)
    base[arrow.rows.cpu()] = False
    assert torch.equal(out[base.to(out.device)], out0[base.to(out.device)]), "base rows were touched"


SIZES = [(64, 64), (160, 96)]
SWEEP = [(C, k, R) for C, k, R in [(1, 1, 1), (2, 1, 3), (3, 2, 5), (4, 4, 2), (6, 2, 17), (5, 3, 9)]]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("levels", [False, True], ids=["peft", "levels"])
@pytest.mark.parametrize("small_rows", [0, 10**6], ids=["gemm", "c"])
@pytest.mark.parametrize("case", SWEEP, ids=str)
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_twins_match_the_reference(dtype, size, case, small_rows, levels, monkeypatch):
    monkeypatch.setattr(cpu_lora, "SMALL_GROUP_ROWS", small_rows)  # large groups take the GEMM path
    x, out0, pool, table, arrow, meta = _case(dtype, size, *case, levels=levels)
    ref = _reference(x, out0, pool, table, arrow, meta)
    for apply_rows in (lora_apply, ops._lora_apply_rows):  # torch twin, then the CPU dispatch (C kernel)
        out = out0.clone()
        arrow_apply(x, out, pool, table["a"], table["b"], table["v"], arrow, apply_rows)
        _check(out, ref, out0, arrow, dtype)
    if cpu_arrow.available(x):  # the C weights equal the twin's
        twin = entry_weights(arrow_weights(x, pool, table["v"], arrow), arrow)
        torch.testing.assert_close(cpu_arrow.entry_weights(x, pool, table["v"], arrow), twin, atol=1e-5, rtol=1e-4)
    out = out0.clone()  # the C weights + lora.c, which skips the unchosen entries
    arrow_apply(x, out, pool, table["a"], table["b"], table["v"], arrow, apply_weighted=cpu_lora.lora_apply,
                weigh=cpu_arrow.entry_weights)
    _check(out, ref, out0, arrow, dtype)
    out = out0.clone()  # what serves on CPUs: one fused C call, offsets read in place from (slots, L, M) tables
    col = {k: _column(t) for k, t in table.items()}
    ops.arrow_apply(x, out, pool, col["a"], col["b"], col["v"], arrow)
    _check(out, ref, out0, arrow, dtype)
    out = out0.clone()  # the fused kernel's twin, from the entries' shrink
    y = lora_shrink(x.index_select(0, arrow.entries.entry_rows), pool, table["a"], arrow.entries)
    arrow_expand(x, y, out, pool, table["b"], table["v"], arrow)
    _check(out, ref, out0, arrow, dtype)


def test_weights_are_a_top_k_softmax_over_targeting_candidates():
    x, _, pool, table, arrow, _ = _case(torch.float32, (64, 64), 6, 2, 17)
    w = arrow_weights(x, pool, table["v"], arrow)  # (R, C)
    chosen = (w > 0).sum(1)
    assert torch.all(chosen <= arrow.top_k) and torch.all(chosen >= 1)
    torch.testing.assert_close(w.sum(1), torch.ones(w.shape[0]))
    assert torch.all(w[arrow.cand_slots == ABSENT] == 0) and torch.all(w[arrow.cand_slots < 0] == 0)


def test_with_levels_a_lone_candidate_applies_only_where_it_beats_generic_text():
    """One candidate targets the projection, the other does not: PEFT gives the lone one weight 1 on every row;
    with levels it gets softmax([cos / level, 1]) when it is chosen over the base (top_k 1: all or nothing)."""
    x, _, pool, table, _, (ranks, scalings) = _case(torch.float32, (64, 64), 2, 1, 3)
    v = pool[table["v"][0] : table["v"][0] + 64].float()
    cos = (x @ v).abs() / x.norm(dim=1)  # (T,)
    level = float(cos.sort().values[2:4].mean())  # between two rows' cosines: no ties with the base
    rows = list(range(x.shape[0]))
    for top_k in (1, 2):
        peft = ArrowRows.build([[0, ABSENT]] * len(rows), rows, [top_k] * len(rows), [0.5] * len(rows), ranks, scalings)
        assert torch.all(arrow_weights(x, pool, table["v"], peft)[:, 0] == 1)
        cal = ArrowRows.build([[0, ABSENT]] * len(rows), rows, [top_k] * len(rows), [0.5] * len(rows), ranks,
                              scalings, levels=[[level, 1.0]] * len(rows))
        w = arrow_weights(x, pool, table["v"], cal)[:, 0]  # (T,)
        if cpu_arrow.available(x):
            torch.testing.assert_close(cpu_arrow.entry_weights(x, pool, table["v"], cal)[cal.cand_entries[:, 0]], w)
        u = cos / level
        expect = (u > 1).float() if top_k == 1 else torch.sigmoid((u - 1) / 0.5)
        torch.testing.assert_close(w, expect, atol=1e-5, rtol=1e-5)
        assert 0 < int((u > 1).sum()) < len(rows)  # both sides of the bar occur


def test_a_row_whose_candidates_do_not_target_the_projection_gets_no_delta():
    x, out0, pool, table, _, (ranks, scalings) = _case(torch.float32, (64, 64), 2, 1, 3)
    arrow = ArrowRows.build([[ABSENT]], [1], [1], [1.0], ranks, scalings, DEVICE)
    out = out0.clone()
    arrow_apply(x, out, pool, table["a"], table["b"], table["v"], arrow, lora_apply)
    assert torch.equal(out, out0)


@needs_triton
@pytest.mark.parametrize("levels", [False, True], ids=["peft", "levels"])
@pytest.mark.parametrize("case", SWEEP, ids=str)
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_fused_matches_its_twin(dtype, size, case, levels):
    x, out0, pool, table, arrow, meta = _case(dtype, size, *case, levels=levels)
    info = arrow.entries
    y = sgmv_shrink_fwd(x.index_select(0, info.entry_rows).contiguous(), pool, table["a"], info)
    out, twin = out0.clone(), out0.clone()
    arrow_expand_fwd(x, y, out, pool, table["b"], table["v"], arrow)
    arrow_expand(x, y, twin, pool, table["b"], table["v"], arrow)
    torch.testing.assert_close(out.float(), twin.float(), **TOL[dtype])
    _check(out, _reference(x, out0, pool, table, arrow, meta), out0, arrow, dtype)
