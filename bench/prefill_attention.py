"""Paged prefill attention on CPU: the C kernel (kernels/cpu/paged_attention.c) vs the torch twin
(each sequence's pages gathered, one SDPA call per sequence), per layer call.

Shapes are SmolLM2-135M's attention (9 query heads over 3 kv heads, head dim 64) on 16-token pages
scattered over a multi-layer pool, as the engine lays them out. Each kernel is checked against the
twin before it is timed. GFLOP/s counts the causal work only (QK and PV over the keys each query sees).

    python bench/prefill_attention.py [--threads 2]
"""

import argparse

import torch
from lora_kernels import timeit  # bench/ is sys.path[0] when run by path

from kernels.cpu import paged_attention as cpu_attention
from kernels.torch import paged_attention_prefill as twin

H, KVH, HD, BS, LAYERS = 9, 3, 64, 16, 30


def scenarios() -> dict[str, list[tuple[int, int]]]:
    """name -> [(context length, query chunk length)] per sequence."""
    return {
        "1 x 128 prompt": [(128, 128)],
        "1 x 512 prompt": [(512, 512)],
        "16 x 128 prompts": [(128, 128)] * 16,
        "1 x 128 chunk after 384 cached": [(512, 128)],
        "4 x 96 chunks + 28 x 1-token": [(300, 96)] * 4 + [(200, 1)] * 28,
    }


def make_inputs(seqs: list[tuple[int, int]], dtype: torch.dtype, gen: torch.Generator):
    blocks = [-(-n // BS) for n, _ in seqs]
    num_pages = sum(blocks) + 8
    pool = torch.randn(num_pages, LAYERS, 2, BS, KVH, HD, generator=gen).to(dtype)  # the engine's KV pool
    k_cache, v_cache = pool[:, 1, 0], pool[:, 1, 1]  # (num_pages, BS, KVH, HD), strided
    pages = torch.randperm(num_pages, generator=gen)
    block_tables = torch.zeros(len(seqs), max(blocks), dtype=torch.int32)  # (S, max_blocks)
    start = 0
    for i, n in enumerate(blocks):
        block_tables[i, :n] = pages[start : start + n]
        start += n
    q_lens = [n for _, n in seqs]
    cu_seqlens_q = torch.tensor([0, *q_lens]).cumsum(0).to(torch.int32)  # (S + 1,)
    context_lens = torch.tensor([c for c, _ in seqs], dtype=torch.int32)  # (S,)
    q = torch.randn(sum(q_lens), H, HD, generator=gen).to(dtype)  # (Tq, H, hd)
    return q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, HD**-0.5


def causal_flop(seqs: list[tuple[int, int]]) -> int:
    keys = sum(sum(range(c - n + 1, c + 1)) for c, n in seqs)  # keys each query sees, summed
    return 4 * H * HD * keys  # QK and PV, a multiply-add each


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not cpu_attention.available(torch.zeros(1)):
        raise SystemExit("the C kernel is not available (no compiler?)")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"threads {args.threads}; H {H}, kv heads {KVH}, head dim {HD}, block {BS}")
    head = f"{'dtype':9} {'scenario':32} {'GFLOP':>6}"
    print(f"{head} | {'twin us':>9} {'GFLOP/s':>7} | {'C us':>9} {'GFLOP/s':>7} | x twin")
    for dtype in (torch.float32, torch.bfloat16):
        for name, seqs in scenarios().items():
            inputs = make_inputs(seqs, dtype, gen)
            ref = twin(*inputs)
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(cpu_attention.paged_attention_prefill(*inputs), ref, atol=tol, rtol=tol)
            flop = causal_flop(seqs)
            t_twin = timeit(lambda: twin(*inputs))  # noqa: B023
            t_c = timeit(lambda: cpu_attention.paged_attention_prefill(*inputs))  # noqa: B023
            print(
                f"{str(dtype)[6:]:9} {name:32} {flop / 1e9:6.3f} | {t_twin * 1e6:9.0f} {flop / t_twin / 1e9:7.1f}"
                f" | {t_c * 1e6:9.0f} {flop / t_c / 1e9:7.1f} | {t_twin / t_c:6.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
