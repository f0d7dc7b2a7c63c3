"""llama.cpp's own engine figures on our base model: llama-bench (one request) and llama-batched-bench (many).

    python -m bench.llama_cpp_engine --out bench/results/llama_cpp.json

For each of F32, Q8_0 and Q4_1 (bench/peers/llama_cpp.py makes the GGUF files from the weights loraplex
serves): first the greedy tokens llama-server gives two prompts are checked against transformers on our
float32 checkpoint (F32 must match; the quantised files are reported), then
- llama-bench -p 128 -n 64 -t 2: prefill tok/s over a 128-token prompt and decode ms/token over 64 tokens,
  one sequence;
- llama-batched-bench -npp 128 -ntg 64 -npl 16,64 -t 2: 16 and 64 sequences, each its own 128-token prompt,
  64 tokens generated each; decode tok/s (generated tokens / decode time) and generated tokens / total time.
`--threads 2,1` times both thread counts: two threads spin at each barrier and collapse when another process
wants a core (decode 6x slower on a loaded machine), one thread does not. Both tools print machine-readable
output (llama-bench -o json, llama-batched-bench --output-format jsonl), parsed here.
bench/engine.py can import `measure()`.

With --serve, llama-server (F32, --parallel 16, --threads 1 as in the comparison) also takes bursts of 96
requests through bench/serve.py (prompts 16-64 tokens, 48 generated, greedy): the base model with no adapter
loaded, then with the 100 synthetic adapters loaded, the base again and the adapters at Zipf(1), each adapter
named by the request's lora field.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.peers import llama_cpp, process, validate
from bench.peers.assets import base_model_dir
from bench.peers.compare import abbreviate
from bench.peers.systems import REPO, SERVED_NAME

PROMPT, GEN, PARALLEL = 128, 64, (16, 64)
CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
CHECK_PROMPTS = [[9519, 314, 253, 1397, 28, 253, 3567, 2040], [504, 2986, 282, 4155, 314, 216, 33, 30, 216]]
CHECK_TOKENS = 16
BURST = {"requests": 96, "prompt_len": "16,64", "output_len": "48", "adapters": 100, "parallel": 16}


def llama_bench_command(build: llama_cpp.Build, model: Path, threads: int) -> list[str]:
    return [str(build.binary("llama-bench")), "-m", str(model), "-p", str(PROMPT), "-n", str(GEN),
            "-t", str(threads), "-o", "json"]


def decode_at_depth_command(build: llama_cpp.Build, model: Path, threads: int) -> list[str]:
    """llama-bench's decode of GEN tokens after a PROMPT-token context (-d), as loraplex's one request decodes;
    one repetition (after its warm-up run)."""
    return [str(build.binary("llama-bench")), "-m", str(model), "-p", "0", "-n", str(GEN), "-d", str(PROMPT),
            "-r", "1", "-t", str(threads), "-o", "json"]


def decode_at_depth(build: llama_cpp.Build, model: Path, threads: int) -> dict:
    out, _, _ = _run(decode_at_depth_command(build, model, threads))
    return parse_llama_bench(out)


def batched_bench_command(build: llama_cpp.Build, model: Path, threads: int) -> list[str]:
    # KV is per sequence here (not unified): the context is split in max(PARALLEL) equal parts, each must
    # hold a prompt and its output
    ctx = max(PARALLEL) * 2 * (PROMPT + GEN)
    return [str(build.binary("llama-batched-bench")), "-m", str(model), "-c", str(ctx), "-npp", str(PROMPT),
            "-ntg", str(GEN), "-npl", ",".join(map(str, PARALLEL)), "-t", str(threads), "--output-format", "jsonl"]


def parse_llama_bench(stdout: str) -> dict:
    """llama-bench -o json (one object per test: pp = n_prompt only, tg = n_gen only) -> the figures."""
    rows = json.loads(stdout[stdout.index("[") :])
    out = {"build_commit": rows[0].get("build_commit"), "model_type": rows[0].get("model_type"),
           "n_threads": rows[0].get("n_threads")}
    for r in rows:
        if r["n_prompt"] and not r["n_gen"]:
            out |= {"prefill_tokens": r["n_prompt"], "prefill_tok_per_s": r["avg_ts"],
                    "prefill_tok_per_s_stddev": r["stddev_ts"], "repetitions": len(r.get("samples_ns", []))}
        elif r["n_gen"] and not r["n_prompt"]:
            out |= {"decode_tokens": r["n_gen"], "decode_ms_per_token": r["avg_ns"] / r["n_gen"] / 1e6,
                    "decode_tok_per_s": r["avg_ts"], "decode_tok_per_s_stddev": r["stddev_ts"]}
    return out


def parse_batched_bench(stdout: str) -> dict[int, dict]:
    """llama-batched-bench --output-format jsonl -> sequences in parallel -> the figures."""
    out = {}
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        generated = r["pl"] * r["tg"]
        out[r["pl"]] = {"prompt_tokens": r["pp"], "generated_per_sequence": r["tg"],
                        "prefill_tok_per_s": r["speed_pp"], "prefill_s": r["t_pp"],
                        "decode_tok_per_s": r["speed_tg"], "decode_s": r["t_tg"],
                        "generated_tok_per_s_incl_prefill": generated / r["t"], "total_s": r["t"]}
    return out


def greedy_tokens_llama(build: llama_cpp.Build, model: Path) -> list[list[int]]:
    """CHECK_TOKENS greedy tokens per CHECK_PROMPTS from llama-server (EOS ignored)."""
    port = process.free_port()
    log = llama_cpp.cache_root() / "logs" / f"check-{model.stem}.log"
    server = process.start("llama-server", llama_cpp.server_command(build, port, model, [], 1), port, log)
    try:
        return [httpx.post(f"{server.url}/completion", timeout=300,
                           json={"prompt": p, "n_predict": CHECK_TOKENS, "temperature": 0, "ignore_eos": True,
                                 "return_tokens": True, "cache_prompt": False}).json()["tokens"]
                for p in CHECK_PROMPTS]
    finally:
        process.stop(server)


def greedy_tokens_reference() -> list[list[int]]:
    """The same from transformers on the float32 checkpoint loraplex loads."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model_dir(), dtype=torch.float32).eval()
    with torch.inference_mode():
        return [model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                               max_new_tokens=CHECK_TOKENS, min_new_tokens=CHECK_TOKENS, do_sample=False,
                               pad_token_id=0)[0, len(p) :].tolist() for p in CHECK_PROMPTS]


def agreement(ours: list[list[int]], ref: list[list[int]]) -> dict:
    """Identical sequences, and the share of leading tokens that match before the first difference."""
    lead = [next((i for i, (a, b) in enumerate(zip(x, y, strict=True)) if a != b), len(y))
            for x, y in zip(ours, ref, strict=True)]
    return {"identical": sum(x == y for x, y in zip(ours, ref, strict=True)), "of": len(ref),
            "matching_prefix_tokens": lead}


def _run(cmd: list[str]) -> tuple[str, float, tuple[float, float]]:
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout, time.monotonic() - t0, (load_before, os.getloadavg()[0])


def cpu_info() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"model": model or platform.processor(), "cores": os.cpu_count(),
            "flags": [f for f in CPU_FLAGS if f in flags]}


def measure(kinds: tuple[str, ...] = llama_cpp.MODEL_KINDS, threads: tuple[int, ...] = (llama_cpp.THREADS,)) -> dict:
    """Validate, then time every kind with both tools at each thread count; the results file's content."""
    build = llama_cpp.ensure_built()
    reference = greedy_tokens_reference()
    models, figures = {}, {}
    for kind in kinds:
        model = llama_cpp.convert_model(kind)
        models[kind] = {"path": str(model), "bytes": model.stat().st_size}
        check = agreement(greedy_tokens_llama(build, model), reference)
        print(f"{kind}: greedy tokens vs transformers fp32: {check['identical']}/{check['of']} identical, "
              f"prefixes {check['matching_prefix_tokens']}", file=sys.stderr)
        if kind == "f32" and check["identical"] != check["of"]:
            raise RuntimeError(f"F32 GGUF disagrees with our checkpoint: {check}")
        figures[kind] = {"validation": check, "by_threads": {}}
        for t in threads:
            single_cmd, batched_cmd = llama_bench_command(build, model, t), batched_bench_command(build, model, t)
            out, single_s, single_load = _run(single_cmd)
            single = parse_llama_bench(out)
            out, batched_s, batched_load = _run(batched_cmd)
            batched = parse_batched_bench(out)
            figures[kind]["by_threads"][t] = {
                "single": single, "batched": batched, "commands": [" ".join(single_cmd), " ".join(batched_cmd)],
                "wall_s": [round(single_s, 1), round(batched_s, 1)],
                "loadavg_1min_before_after": [single_load, batched_load]}
            print(f"{kind} -t {t}: {summary_line(single, batched)}", file=sys.stderr)
    return {"llama_cpp": {"commit": build.commit, "llama_cpp_python": build.version,
                          "cmake_flags": list(llama_cpp.CMAKE_FLAGS)},
            "threads": list(threads), "cpu": cpu_info(), "models": models, "results": figures,
            "workload": {"single": f"1 sequence, {PROMPT}-token prompt, {GEN} generated",
                         "batched": f"{PARALLEL} sequences, each a {PROMPT}-token prompt and {GEN} generated"}}


def summary_line(single: dict, batched: dict[int, dict]) -> str:
    line = ", ".join(f"{n} seqs {b['decode_tok_per_s']:.0f}" for n, b in batched.items())
    return (f"prefill {single['prefill_tok_per_s']:.0f} tok/s, decode {single['decode_ms_per_token']:.2f} ms/token; "
            f"decode tok/s at {line}")


def serve_burst(server: process.ServerProcess, label: str, n: int, out: Path,
                requests: int = BURST["requests"]) -> dict:
    """bench/serve.py: `requests` at once, over n adapters at Zipf(1) (n = 0: the base model)."""
    cmd = [sys.executable, str(REPO / "bench" / "serve.py"), "run", "--url", server.url, "--model", SERVED_NAME,
           "--label", label, "--n", str(n), "--alpha", "1", "--rate", "inf", "--num-requests", str(requests),
           "--duration", "1", "--drain-timeout", "900", "--prompt-len", BURST["prompt_len"],
           "--output-len", BURST["output_len"], "--seed", "0", "--no-progress", "--out", str(out)]
    cmd += ["--adapter-format", "synth-{i:04d}", "--lora-field"] if n else []
    load = os.getloadavg()[0]
    subprocess.run(cmd, check=True, cwd=REPO)
    result = json.loads(out.read_text())
    keep = ("completed", "errors", "duration_s", "req_per_s", "output_tok_per_s", "ttft_s", "tpot_s", "e2e_s")
    return {"command": result["command"], "distinct_adapters": result["distinct_adapters"],
            "loadavg_1min_before_after": [load, os.getloadavg()[0]]} | {k: result["summary"][k] for k in keep}


def measure_serving(threads: int = llama_cpp.SERVER_THREADS) -> dict:
    """llama-server alone: the base with no adapter loaded; then 100 adapters loaded, base and adapter bursts."""
    out_dir = llama_cpp.cache_root() / "logs"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = {}
    for loaded in (0, BURST["adapters"]):
        log = out_dir / f"serve-{loaded}.log"
        server = llama_cpp.start(process.free_port(), loaded, log, parallel=BURST["parallel"], threads=threads)
        try:
            serve_burst(server, "warmup", loaded, out_dir / "warmup.json", requests=8)  # not kept
            if not loaded:
                base = llama_cpp.greedy_outputs(server.url, [SERVED_NAME])[SERVED_NAME]
            else:
                check = validate.check(llama_cpp.greedy_outputs(server.url))
                # adapters loaded must not touch a request that names none
                check["base_unchanged_by_loaded_adapters"] = check["outputs"][SERVED_NAME] == base
                runs["validation"] = check
                if not check["adapters_change_output"] or not check["base_unchanged_by_loaded_adapters"]:
                    raise RuntimeError(f"llama-server's adapters are not applied per request: {check}")
            for n in sorted({0, loaded}):
                label = f"{'base' if n == 0 else f'{n} adapters Zipf(1)'}, {loaded} adapters loaded"
                runs[label] = serve_burst(server, label, n, out_dir / f"serve-{loaded}-{n}.json")
                runs[label]["server_command"] = abbreviate(server.command)
                s = runs[label]
                print(f"{label}: {s['output_tok_per_s']:.1f} tok/s, {s['req_per_s']:.2f} req/s, TTFT p50 "
                      f"{s['ttft_s']['p50']:.2f}s, TPOT p50 {s['tpot_s']['p50'] * 1e3:.0f} ms", file=sys.stderr)
        finally:
            process.stop(server)
    return {"workload": BURST | {"threads": threads, "model": "f32"}, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kinds", default=",".join(llama_cpp.MODEL_KINDS))
    ap.add_argument("--threads", default=str(llama_cpp.THREADS), help="comma-separated thread counts, e.g. 2,1")
    ap.add_argument("--serve", action="store_true", help="also llama-server under bursts (see the module doc)")
    ap.add_argument("--serve-threads", type=int, default=llama_cpp.SERVER_THREADS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report = {"command": "python -m bench.llama_cpp_engine " + " ".join(sys.argv[1:]), "uptime_before": uptime}
    report |= measure(tuple(k for k in args.kinds.split(",") if k), tuple(int(t) for t in args.threads.split(",")))
    if args.serve:
        report["serving"] = measure_serving(args.serve_threads)
    report["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    for kind, r in report["results"].items():
        for t, fig in r["by_threads"].items():
            print(f"{kind} -t {t}: {summary_line(fig['single'], fig['batched'])}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
