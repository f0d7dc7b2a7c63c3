"""loraplex beside llama.cpp's llama-server on one fixed workload: base only, and 100 adapters (Zipf 1).

    python -m bench.peers.llama_server_compare --out bench/results/serve/llama_server.json

Each server runs alone, with the same compute threads and 16 requests in flight (llama-server --parallel 16,
loraplex --max-num-seqs 16); bench/serve.py sends --requests greedy requests at once (the rest wait in each
server's queue), 48 output tokens each, prompts of 16-64 tokens, adapters drawn Zipf(1) from 100 synthetic
ones (ranks 8-64 on q,v: bench/peers/assets.py). llama-server is measured with no adapter loaded (base), and
with the 100 loaded at scale 0 (it applies every loaded adapter each step) for both the base-only and the
mixed runs; each request names its adapter by llama-server's `lora` field. Validation first (bench/peers/
validate.py): greedy texts of the base and two adapters from both servers, their agreement reported, and the
strong adapter must change each server's output (adapters really applied).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.peers import llama_cpp, process, validate
from bench.peers.assets import STRONG_NAME, adapters_dir, strong_adapter
from bench.peers.systems import REPO, SERVED_NAME

N_ADAPTERS = 100
IN_FLIGHT = 16


def _loraplex(port: int, n: int, log: Path, threads: int, weights: str, src: Path = REPO) -> process.ServerProcess:
    """`loraplex serve` from the checkout at src (this one, or a worktree of another revision)."""
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--pool-mb", "2048",
           "--adapter-cache-mb", "4096", "--num-threads", str(threads), "--max-num-seqs", str(IN_FLIGHT),
           "--weights", weights, "--log-level", "warning"]
    if n:
        cmd += ["--adapter-dir", str(adapters_dir(n)), "--adapter", f"{STRONG_NAME}={strong_adapter()}"]
    return process.start("loraplex", cmd, port, log, env={"PYTHONPATH": str(src)}, cwd=src)


def _llama(port: int, n: int, log: Path, threads: int, kind: str) -> process.ServerProcess:
    return llama_cpp.start(port, n, log, kind=kind, parallel=IN_FLIGHT, threads=threads)


def _run(server: process.ServerProcess, label: str, n: int, args, out: Path, lora_field: bool) -> dict:
    cmd = [sys.executable, "bench/serve.py", "run", "--url", server.url, "--model", SERVED_NAME, "--label", label,
           "--adapter-format", "synth-{i:04d}", "--n", str(n), "--alpha", "1", "--rate", "inf",
           "--num-requests", str(args.requests), "--duration", "1", "--drain-timeout", "900",
           "--prompt-len", "16,64", "--output-len", "48,48", "--seed", "0", "--no-progress", "--out", str(out)]
    if lora_field:
        cmd.append("--lora-field")
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    s = json.loads(out.read_text())["summary"]
    row = {"tok_per_s": s["output_tok_per_s"], "ttft_p50_s": s["ttft_s"]["p50"], "ttft_p99_s": s["ttft_s"]["p99"],
           "completed": s["completed"], "errors": s["errors"]}
    print(f"  {label:28s} n={n:3d}: {row['tok_per_s']:7.1f} tok/s, TTFT p50/p99 {row['ttft_p50_s']:.2f}/"
          f"{row['ttft_p99_s']:.2f} s, {row['completed']} done, {row['errors']} errors", flush=True)
    return row


def _warm(server: process.ServerProcess, label: str, n: int, args, work: Path, lora_field: bool) -> None:
    small = argparse.Namespace(requests=8)
    _run(server, f"{label} (warm-up)", n, small, work / "warm.json", lora_field)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2, help="compute threads of each server")
    ap.add_argument("--weights", default="gguf", help="loraplex --weights (gguf: the Q4_1 blocks; fp32)")
    ap.add_argument("--llama-kind", default=None, help="llama-server model file (default: q4_1 for gguf, f32 for fp32)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    kind = args.llama_kind or ("q4_1" if args.weights == "gguf" else "f32")
    work = Path("/tmp/loraplex-llama-server-compare")
    work.mkdir(parents=True, exist_ok=True)
    plan = [  # (label, launcher, adapters loaded, runs: (tag, n in play))
        ("llama-server base", lambda p, lg: _llama(p, 0, lg, args.threads, kind), [("base", 0)]),
        ("llama-server +100", lambda p, lg: _llama(p, N_ADAPTERS, lg, args.threads, kind),
         [("base", 0), ("mixed", N_ADAPTERS)]),
        ("loraplex", lambda p, lg: _loraplex(p, N_ADAPTERS, lg, args.threads, args.weights),
         [("base", 0), ("mixed", N_ADAPTERS)]),
    ]
    results: dict[str, dict] = {}
    greedy: dict[str, dict] = {}
    t0 = time.monotonic()
    for label, launch, runs in plan:
        port = process.free_port()
        server = launch(port, work / f"{label.replace(' ', '_')}.log")
        llama = label.startswith("llama")
        try:
            _warm(server, label, runs[-1][1], args, work, llama)
            if runs[-1][1]:
                greedy[label] = (llama_cpp.greedy_outputs if llama else validate.greedy_outputs)(server.url)
                assert validate.check(greedy[label])["adapters_change_output"], f"{label}: adapters not applied"
            for tag, n in runs:
                results[f"{label} {tag}"] = _run(server, label, n, args, work / f"{label}_{tag}.json".replace(" ", "_"),
                                                 llama)
        finally:
            process.stop(server)
    base = results["llama-server base base"]
    ours_base, ours_mixed = results["loraplex base"], results["loraplex mixed"]
    ratios = {
        "loraplex base / llama-server base (target >= 1.3)": ours_base["tok_per_s"] / base["tok_per_s"],
        "loraplex 100 mixed / llama-server base (target >= 1.0)": ours_mixed["tok_per_s"] / base["tok_per_s"],
        "loraplex 100 mixed / llama-server 100 mixed (target >= 3)":
            ours_mixed["tok_per_s"] / results["llama-server +100 mixed"]["tok_per_s"],
        "loraplex 100 mixed p99 TTFT / llama-server base p99 TTFT (target <= 1.5)":
            ours_mixed["ttft_p99_s"] / base["ttft_p99_s"],
    }
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    report = {
        "command": f"python -m bench.peers.llama_server_compare --requests {args.requests} --threads {args.threads} "
        f"--weights {args.weights} --llama-kind {kind}" + (f" --out {args.out}" if args.out else ""),
        "workload": f"{args.requests} completions at once, {IN_FLIGHT} in flight, prompts 16-64 tokens, 48 output "
        f"tokens, greedy, adapters Zipf(1) over {N_ADAPTERS} synthetic (ranks 8-64, q,v)",
        "llama_server_model": kind, "loraplex_weights": args.weights, "threads": args.threads,
        "validation": {"outputs": greedy, "agreement": validate.agreement(*greedy.values())},
        "results": results, "ratios": ratios, "seconds": round(time.monotonic() - t0),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
