"""Where a decode step's time goes, at 1, 16 and 64 rows: GEMMs, attention, LoRA, norms, rotary,
sampling, step tensors, and the rest (Python and dispatch). Also the fraction of the machine reached:
weight bytes per step / step time vs a measured copy bandwidth (1 row), FLOP/s vs a measured large
GEMM (full batch).

    python bench/profile_step.py --out bench/results/profile_step.json

Categories come from torch.profiler ranges that this script wraps around the model's pieces (no
profiling code lives in the engine).
"""

import argparse
import json
import platform
import time
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import kernels.ops as ops
import server.engine.model_runner as runner_mod
from server.config import EngineConfig
from server.engine.llm_engine import EngineRequest, LLMEngine
from server.engine.sampling_params import SamplingParams

CATEGORIES = ("gemm", "attention", "kv_store", "lora", "norm", "rotary", "sampling", "step_tensors")


def _wrap(owner, name: str, label: str) -> None:
    fn = getattr(owner, name)

    def wrapped(*args, **kwargs):
        with record_function(f"cat::{label}"):
            return fn(*args, **kwargs)

    setattr(owner, name, wrapped)


def instrument() -> None:
    _wrap(ops, "paged_attention_decode", "attention")
    _wrap(ops, "paged_attention_prefill", "attention")
    _wrap(ops, "store_kv", "kv_store")
    _wrap(ops, "lora_apply", "lora")
    _wrap(ops, "quant_matmul", "gemm")  # --weights gguf: the C matmul on GGUF blocks
    _wrap(ops, "rotary_", "rotary")
    _wrap(ops, "add_rms_norm", "norm")
    _wrap(runner_mod, "sample", "sampling")
    _wrap(runner_mod.ModelRunner, "build", "step_tensors")
    _wrap(runner_mod.ModelRunner, "lora_step", "step_tensors")


def weight_bytes(model) -> int:
    """Bytes of weights a step reads, each storage once (fused GEMMs and tied heads share theirs)."""
    tensors = [*model.parameters(), *(b for n, b in model.named_buffers() if "rotary" not in n)]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def matmul_params(cfg) -> int:
    """Weights one token multiplies: every projection of every layer, and the output head."""
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    d, q, kv = cfg.hidden_size, cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    per_layer = d * (q + 2 * kv) + q * d + 3 * d * cfg.intermediate_size
    return cfg.num_hidden_layers * per_layer + cfg.vocab_size * d


def copy_bandwidth() -> float:
    """GB/s of a large tensor copy (read + write), best of 5."""
    src = torch.empty(256 << 20 >> 2)  # 256 MiB fp32
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def gemm_peak() -> float:
    """GFLOP/s of a large fp32 GEMM, best of 5, by torch's GEMM or the CPU matmul kernel's packed path,
    whichever is faster here (the kernel beats torch's GEMM on some hosts: the peak is the machine's)."""
    from kernels import ops

    a, b = torch.randn(1024, 2048), torch.randn(2048, 2048)
    candidates = [lambda: torch.mm(a, b.T), lambda: ops.quant_matmul(a, b.view(torch.uint8), 0)]  # (1024, 2048)
    best = float("inf")
    for fn in candidates:
        fn()
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return 2 * 1024 * 2048 * 2048 / best / 1e9


def decode_ready(engine: LLMEngine, rows: int, prompt_len: int, adapter: str | None) -> None:
    params = SamplingParams(max_tokens=10_000, temperature=0, ignore_eos=True)
    for i in range(rows):
        engine.add_request(EngineRequest(f"p{i}", list(range(1000 + i, 1000 + i + prompt_len)), params, adapter))
    while any(c.num_tokens > 1 for c in (engine.step() and engine.last_step.chunks)):
        pass


@contextmanager
def quiet_profile():
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        yield prof


def _wall(engine: LLMEngine, steps: int) -> float:
    for _ in range(3):  # warm-up
        engine.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    return (time.perf_counter() - t0) / steps


def profile_rows(engine: LLMEngine, rows: int, steps: int) -> dict:
    """Wall time per step as served (with the step plan where it applies: all layers in one C call), and as
    the model's Python forward; the breakdown is of the forward (the plan runs the same kernels, but inside
    one call the profiler cannot split)."""
    runner = engine.runner
    served = runner.hidden_states
    wall = _wall(engine, steps)
    runner.hidden_states = runner.model.hidden_states
    forward_wall = _wall(engine, steps)
    with quiet_profile() as prof:
        for _ in range(steps):
            with record_function("cat::step"):
                engine.step()
    runner.hidden_states = served
    cat = dict.fromkeys(CATEGORIES, 0.0)
    step_us = 0.0
    for e in prof.key_averages():
        if e.key == "cat::step":
            step_us = e.cpu_time_total
        elif e.key.startswith("cat::"):
            cat[e.key[5:]] += e.cpu_time_total
        if e.key in ("aten::mm", "aten::addmm"):  # dense Linears (their aten::linear parents not counted)
            cat["gemm"] += e.cpu_time_total
    # LoRA's own GEMMs (large groups) sit inside cat::lora: do not count them twice
    ms = {k: v / 1e3 / steps for k, v in cat.items()}
    prof_step = step_us / 1e3 / steps
    ms["other (python, dispatch, elementwise)"] = max(0.0, prof_step - sum(ms.values()))
    return {"rows": rows, "step_ms": round(wall * 1e3, 2), "forward_step_ms": round(forward_wall * 1e3, 2),
            "step_plan": served != runner.model.hidden_states, "profiled_step_ms": round(prof_step, 2),
            "ms": {k: round(v, 3) for k, v in ms.items()},
            "share": {k: round(v / prof_step, 3) for k, v in ms.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="1,16,64")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--adapter-dir", default="server/adapters/demo/adapters", help="rows use its first adapter "
                   "with --lora")
    p.add_argument("--lora", action="store_true", help="every row uses an adapter (the first demo one)")
    p.add_argument("--weights", default=None, help="EngineConfig.weights, when the engine has that option")
    p.add_argument("--label", default="")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    instrument()
    kw = {"weights": args.weights} if args.weights else {}
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        engine = LLMEngine.from_config(EngineConfig(dtype="float32", pool_mb=1024, max_num_seqs=max(rows, 1),
                                                    max_batch_tokens=4096, num_threads=args.threads, **kw))
        adapter = None
        if args.lora:
            engine.registry.register_dir(args.adapter_dir)
            adapter = engine.registry.list()[0].name
        decode_ready(engine, rows, args.prompt_len, adapter)
        r = profile_rows(engine, rows, args.steps)
        flops = 2 * matmul_params(engine.checkpoint.config) * rows
        r["weight_GB_per_s"] = round(weight_bytes(engine.runner.model) / (r["step_ms"] / 1e3) / 1e9, 2)
        r["GFLOP_per_s"] = round(flops / (r["step_ms"] / 1e3) / 1e9, 1)
        results.append(r)
        print(json.dumps(r))
    bw, peak = copy_bandwidth(), gemm_peak()
    for r in results:
        r["bandwidth_fraction"] = round(r["weight_GB_per_s"] / bw, 3)
        r["gemm_peak_fraction"] = round(r["GFLOP_per_s"] / peak, 3)
    out = {"label": args.label, "command": "python bench/profile_step.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False, "")),
        "threads": args.threads, "copy_GB_per_s": round(bw, 1), "gemm_peak_GFLOP_per_s": round(peak, 1),
        "cpu": platform.processor() or platform.machine(), "results": results}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "results"}))


if __name__ == "__main__":
    main()
