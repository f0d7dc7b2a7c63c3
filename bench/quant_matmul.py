"""The CPU matmul kernel's paths side by side on one model's projection shapes (kernels/cpu/quant_matmul.c):
the default (isa -1: the register path up to GEMV_MAX_ROWS rows, 1.5x that for quantized blocks, the packed
outer-product path past them; up to session 9 the tiled one below 16 rows on AVX-512), the register and tiled
paths by name (best isa), and for dense
fp32 torch's GEMM, at each row count and thread count. Same run, best of N each.

    python -m bench.quant_matmul --out bench/results/quant_matmul_packed.json
"""

import argparse
import json
import platform
import time

import torch

from kernels.cpu import quant_matmul as cpu_quant
from kernels.torch.quant_matmul import BF16, F32, Q4_1, Q8_0, TYPE_NAMES, dequantize

# SmolLM2-135M: fused q/k/v, o, fused gate/up, down (out, in)
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]


def blocks_for(qtype: int, out: int, k: int) -> torch.Tensor:
    w = torch.randn(out, k, generator=torch.Generator().manual_seed(out * k))
    if qtype == F32:
        return w.view(torch.uint8)
    if qtype == BF16:
        return w.to(torch.bfloat16).view(torch.uint8)
    from gguf import GGMLQuantizationType, quantize  # the format's own quantizer (dev dependency)

    q = quantize(w.numpy(), GGMLQuantizationType(qtype))
    return torch.from_numpy(q).view(torch.uint8).reshape(out, -1)


def best_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def measure(qtype: int, rows: int, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    weights = [blocks_for(qtype, n, k) for n, k in SHAPES]
    xs = [torch.randn(rows, k) for _, k in SHAPES]
    best = cpu_quant.best_isa()
    paths = {"default": lambda x, b: cpu_quant.run(x, b, qtype, isa=-1)}
    if rows <= 16:  # where the register path's limit (GEMV_MAX_ROWS) is chosen
        paths["registers"] = lambda x, b: cpu_quant.run(x, b, qtype, isa=best, gemv_rows=64)
    if rows > 1:
        paths["tiled"] = lambda x, b: cpu_quant.run(x, b, qtype, isa=best, gemv_rows=0)
    if qtype == F32:
        dense = [dequantize(b, F32) for b in weights]
        paths["torch_gemm"] = None
    ms = {}
    for name, fn in paths.items():
        if name == "torch_gemm":
            ms[name] = best_ms(lambda: [torch.mm(x, w.T) for x, w in zip(xs, dense, strict=True)], repeats)
        else:
            ms[name] = best_ms(lambda fn=fn: [fn(x, b) for x, b in zip(xs, weights, strict=True)], repeats)
    flops = 2 * rows * sum(n * k for n, k in SHAPES)
    return {"type": TYPE_NAMES[qtype], "rows": rows, "threads": threads, "ms": {k: round(v, 4) for k, v in ms.items()},
            "GFLOP_per_s": {k: round(flops / v / 1e6, 1) for k, v in ms.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--types", default="F32,Q4_1,Q8_0,BF16")
    p.add_argument("--rows", default="1,4,8,12,16,32,64,128,512,2048")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    by_name = {v: k for k, v in TYPE_NAMES.items()}
    assert {Q4_1, Q8_0} <= set(by_name.values())
    results = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for name in args.types.split(","):
            for rows in [int(r) for r in args.rows.split(",")]:
                r = measure(by_name[name], rows, threads, args.repeats)
                results.append(r)
                print(json.dumps(r), flush=True)
    out = {"command": "python -m bench.quant_matmul " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
           "cpu": platform.processor() or platform.machine(), "best_isa": cpu_quant.best_isa(), "shapes": SHAPES,
           "loadavg_1min": __import__("os").getloadavg()[0], "results": results}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
