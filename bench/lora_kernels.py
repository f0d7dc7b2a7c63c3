"""Heterogeneous LoRA on CPU: the torch twin (one matmul pair per distinct slot on pool views, fused
or as shrink + expand) vs a bucket-by-rank variant (each row's factors gathered, one bmm pair per rank).

Shapes are SmolLM2-135M's projections; ranks mixed from {8, 16, 32, 64}. Every strategy is checked
against the row-by-row reference before it is timed. GB/s counts each distinct adapter's factors
once (what must be read at least); `x base` is the time relative to the base Linear on the same rows.

    python bench/lora_kernels.py [--threads 1]
"""

import argparse
import random
import time

import torch
import torch.nn.functional as F

from kernels.lora_batch import LoRABatchInfo
from kernels.lora_reference import lora_reference
from kernels.torch.lora import compute_dtype, lora_apply, lora_expand, lora_shrink

SHAPES = [(576, 576), (576, 1536), (1536, 576)]  # (in, out): q/o, gate/up, down
RANKS = [8, 16, 32, 64]


def scenarios(rng: random.Random) -> dict[str, tuple[list[int], int]]:
    """name -> (row slots, number of resident adapters)."""
    zipf = lambda n, k: rng.choices(range(n), weights=[1 / (i + 1) for i in range(n)], k=k)
    prefill = [s for s in range(4) for _ in range(128)]
    return {
        "decode 32 rows, 32 distinct": (list(range(32)), 32),
        "decode 32 rows, zipf over 100": (zipf(100, 32), 100),
        "decode 32 rows, 1 adapter": ([0] * 32, 1),
        "prefill 4 x 128 rows": (prefill, 4),
        "prefill 2 x 128 + 32 decode zipf": (prefill[:256] + zipf(100, 32), 100),
    }


def make_pool(ranks: list[int], d_in: int, d_out: int, dtype, gen: torch.Generator):
    """Each adapter's A and B at shuffled offsets of one flat pool, with gaps between them."""
    sizes = [(s, kind, r * d_in if kind == "a" else d_out * r) for s, r in enumerate(ranks) for kind in "ab"]
    offsets, pos = {}, 0
    for i in torch.randperm(len(sizes), generator=gen).tolist():
        s, kind, n = sizes[i]
        pos += 64
        offsets[s, kind] = pos
        pos += n
    pool = (torch.randn(pos + 64, generator=gen) * 0.05).to(dtype)  # (N,)
    a_off = torch.tensor([offsets[s, "a"] for s in range(len(ranks))])
    b_off = torch.tensor([offsets[s, "b"] for s in range(len(ranks))])
    return pool, a_off, b_off


def two_pass_apply(x, out, pool, a_offsets, b_offsets, info: LoRABatchInfo) -> None:
    """The twin's shrink then expand, as the Triton path runs them (lora_apply fuses them per group)."""
    lora_expand(lora_shrink(x, pool, a_offsets, info), out, pool, b_offsets, info)


def bucketed_apply(x, out, pool, a_offsets, b_offsets, info: LoRABatchInfo) -> None:
    """The alternative: rows bucketed by rank, each row's factors gathered, one bmm pair per bucket."""
    d_in, d_out = x.shape[1], out.shape[1]
    cdt = compute_dtype(x.dtype)
    rows = (info.row_slots >= 0).nonzero()[:, 0]  # (n,)
    slots = info.row_slots[rows].long()  # (n,)
    row_ranks = info.ranks[slots]  # (n,)
    for r in row_ranks.unique().tolist():
        sel = row_ranks == r
        rr, ss = rows[sel], slots[sel]
        # Row i of a sliding-window view is pool[i : i + L]: one index_select gathers whole factors.
        a = _windows(pool, r * d_in).index_select(0, a_offsets[ss]).view(-1, r, d_in).to(cdt)  # (m, r, in)
        b = _windows(pool, d_out * r).index_select(0, b_offsets[ss]).view(-1, d_out, r).to(cdt)  # (m, out, r)
        y = torch.bmm(a, x[rr].to(cdt)[:, :, None])  # (m, r, 1)
        delta = torch.bmm(b, y)[:, :, 0] * info.scalings[ss][:, None]  # (m, out)
        out.index_add_(0, rr, delta.to(out.dtype))


def _windows(pool: torch.Tensor, length: int) -> torch.Tensor:
    return pool.as_strided((pool.numel() - length + 1, length), (1, 1))  # (N - L + 1, L), overlapping


def timeit(fn, min_time: float = 0.15, reps: int = 5) -> float:
    """Best of `reps` runs of a loop lasting at least min_time: robust to a shared, noisy host."""
    fn()
    n, t = 1, 0.0
    while t < min_time / reps:
        n *= 2
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
    best = t / n
    for _ in range(reps - 1):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def copy_bandwidth() -> float:
    src = torch.empty(64 * 2**20, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / timeit(lambda: dst.copy_(src)) / 1e9  # read + write


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, copy bandwidth {copy_bandwidth():.1f} GB/s (read + write)")
    strategies = {"grouped, fused": lora_apply, "grouped, 2-pass": two_pass_apply, "bucket-by-rank": bucketed_apply}
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    header = f"{'dtype':9} {'scenario':40} {'in->out':>10} {'base us':>8} {'GFLOP':>6}"
    print(header + "".join(f" | {name:>15} us GB/s GFLOP/s x base" for name in strategies))
    for dtype in (torch.float32, torch.bfloat16):
        for name, (row_slots, n_adapters) in scenarios(rng).items():
            ranks = [rng.choice(RANKS) for _ in range(n_adapters)]
            scalings = [2.0 / r for r in ranks]
            info = LoRABatchInfo.from_row_slots(row_slots, ranks, scalings)
            used = {s for s in row_slots if s >= 0}
            for d_in, d_out in SHAPES:
                pool, a_off, b_off = make_pool(ranks, d_in, d_out, dtype, gen)
                x = torch.randn(len(row_slots), d_in, generator=gen).to(dtype)  # (T, in)
                w = (torch.randn(d_out, d_in, generator=gen) * 0.05).to(dtype)  # (out, in), the base layer
                ref = lora_reference(x, pool, a_off, b_off, info, d_out)
                weight_bytes = sum(ranks[s] * (d_in + d_out) for s in used) * pool.element_size()
                flop = sum(2 * ranks[s] * (d_in + d_out) for s in row_slots if s >= 0)
                base = timeit(lambda: F.linear(x, w))  # noqa: B023
                line = f"{str(dtype)[6:]:9} {name:40} {f'{d_in}->{d_out}':>10} {base * 1e6:8.0f} {flop / 1e9:6.3f}"
                for fn in strategies.values():
                    out = torch.zeros(len(row_slots), d_out, dtype=dtype)
                    fn(x, out, pool, a_off, b_off, info)
                    tol = 1e-4 if dtype == torch.float32 else 3e-2
                    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
                    t = timeit(lambda fn=fn, out=out: fn(x, out, pool, a_off, b_off, info))  # noqa: B023
                    line += f" | {t * 1e6:18.0f} {weight_bytes / t / 1e9:4.1f} {flop / t / 1e9:7.1f} {t / base:6.2f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
