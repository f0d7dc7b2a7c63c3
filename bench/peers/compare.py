"""The serving comparison: loraplex vs vLLM-CPU vs a transformers + PEFT server, same model, adapters and workload.

    python bench/peers/compare.py --out-dir bench/results/serve                   # full comparison, ~45 min
    python bench/peers/compare.py --quick --out-dir /tmp/serve-quick             # smoke run, ~3 min

Each system is started alone (2 cores: never two at once) with all max(--ns) synthetic adapters registered,
and driven by bench/serve.py (a subprocess per run, its exact command kept in the result). Per system:
1. warm-up (4 requests, not kept), then validate.py's greedy outputs (base and two adapters);
2. probe: a burst of --probe-requests at n = 100, alpha = 1; its throughput S0;
3. sweep at n = 100, alpha = 1: offered rates 1.5 S0, then x --sweep-growth while the system keeps up
   (no errors, completion rate >= 0.85x and run-long rate >= 0.7x the rate requests left at), at most
   --sweep-steps runs; the saturation throughput S is the best request rate achieved by the probe
   and the sweep, and the operating rate R* = --load x S;
4. grid at R*: n in --ns at alpha = 1 and n in --skew-free-ns at alpha = 0.1;
5. the base model alone: a burst, then an offered rate of 1.5x its throughput (its own saturation).
Systems run in the order given, each until an equal share of --budget-min has passed since the start
(time one leaves over goes to the next); a run whose worst case (duration + drain) would not fit is
skipped and listed. Then report.py writes summary.md, summary.json and the charts.
"""

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.peers import llama_cpp, process, validate
from bench.peers.assets import adapters_dir, export_base_model
from bench.peers.report import write_report
from bench.peers.systems import REPO, SERVED_NAME, SYSTEMS

SYSTEMS = SYSTEMS | llama_cpp.SYSTEMS  # llama.cpp is built at bench time, so its systems live with its build
SWEEP_N = 100


@dataclass(frozen=True, slots=True)
class Plan:
    systems: tuple[str, ...]
    ns: tuple[int, ...]  # adapters in play, alpha = 1
    skew_free_ns: tuple[int, ...]  # adapters in play, alpha = 0.1
    sweep_growth: float  # each sweep step offers this many times the previous rate
    sweep_steps: int  # most sweep runs
    load: float  # operating rate R* as a fraction of the saturation throughput S
    probe_requests: int
    duration_s: float  # requests leave during this long
    drain_s: float  # then in-flight ones get this long
    max_requests: int
    prompt_len: str
    output_len: str
    slo_ttft_s: float
    budget_min: float
    seed: int

    def __post_init__(self) -> None:
        unknown = set(self.systems) - set(SYSTEMS)
        if unknown:
            raise ValueError(f"unknown systems {sorted(unknown)}; known: {sorted(SYSTEMS)}")
        if not 0 < self.load <= 1 or self.duration_s <= 0 or self.budget_min <= 0:
            raise ValueError("--load must be in (0, 1], --run-duration and --budget-min positive")
        if self.sweep_growth <= 1 or self.sweep_steps < 1 or self.probe_requests < 1:
            raise ValueError("--sweep-growth must be > 1, --sweep-steps and --probe-requests >= 1")


class Runner:
    """Runs bench/serve.py against one started system; keeps results, skips what the budget cannot hold."""

    def __init__(self, plan: Plan, system: str, server: process.ServerProcess, out_dir: Path, deadline: float):
        self.plan, self.system, self.server, self.out_dir, self.deadline = plan, system, server, out_dir, deadline
        self.results: list[dict] = []
        self.skipped: list[str] = []

    def run(self, tag: str, n: int, alpha: float, rate: float, num: int | None = None, keep: bool = True,
            duration: float | None = None) -> dict | None:
        p = self.plan
        duration = p.duration_s if duration is None else duration
        worst = (duration if math.isfinite(rate) else 0) + p.drain_s + 10
        if time.monotonic() + worst > self.deadline:
            self.skipped.append(f"{self.system} {tag} (n={n}, alpha={alpha}, rate={rate:.3g})")
            print(f"  skip {tag}: the budget left cannot hold it", flush=True)
            return None
        if num is None:
            num = min(p.max_requests, math.ceil(rate * duration) + 1)
        out = (self.out_dir if keep else self.out_dir / "logs") / f"{self.system}_{tag}.json"
        meta = {"system": self.system, "tag": tag, "server_start_s": round(self.server.start_s, 1)}
        cmd = [sys.executable, "bench/serve.py", "run", "--url", self.server.url, "--model", SERVED_NAME,
               "--label", self.system, "--adapter-format", "synth-{i:04d}", "--n", str(n), "--alpha", str(alpha),
               "--rate", f"{rate:.4g}" if math.isfinite(rate) else "inf", "--cv", "1",
               "--num-requests", str(num), "--duration", f"{duration:g}", "--drain-timeout", f"{p.drain_s:g}",
               "--prompt-len", p.prompt_len, "--output-len", p.output_len, "--slo-ttft", f"{p.slo_ttft_s:g}",
               "--seed", str(p.seed), "--no-progress", "--meta", json.dumps(meta), "--out", str(out)]
        cmd += llama_cpp.SERVE_ARGS if self.system in llama_cpp.SYSTEMS else ()
        out.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        print("  " + done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "  (no output)", flush=True)
        if done.returncode != 0 or not self.server.alive():
            print(f"  run failed (rc {done.returncode}, server alive {self.server.alive()}):\n{done.stdout[-2000:]}")
            if not self.server.alive():
                raise RuntimeError(f"{self.system} died:\n{self.server.tail()}")
            return None
        result = json.loads(out.read_text())
        if keep:
            self.results.append(result)
        return result


def req_rate(result: dict | None) -> float:
    return result["summary"]["req_per_s"] if result else 0.0


def keeps_up(result: dict) -> bool:
    s = result["summary"]
    # completions come in clumps when a batch ends, so the completion rate alone overstates a slow
    # server over few requests; the rate over the whole run (drain included) must keep up too
    return (s["errors"] == 0 and s["completion_rate"] >= 0.85 * s["arrival_rate"]
            and s["req_per_s"] >= 0.7 * s["arrival_rate"])


def measure(plan: Plan, system: str, out_dir: Path, deadline: float, port: int) -> tuple[list[dict], list[str]]:
    n_max = max(plan.ns + plan.skew_free_ns)
    log = out_dir / "logs" / f"{system}.log"
    print(f"[{system}] starting ({SYSTEMS[system].describe})", flush=True)
    server = SYSTEMS[system].launch(port, n_max, log)
    print(f"[{system}] healthy after {server.start_s:.0f}s", flush=True)
    r = Runner(plan, system, server, out_dir, deadline)
    try:
        r.run("warmup", 1, 1.0, math.inf, num=4, keep=False)
        try:
            greedy = llama_cpp.greedy_outputs if system in llama_cpp.SYSTEMS else validate.greedy_outputs
            validate.save(out_dir, system, validate.check(greedy(server.url)))
        except httpx.HTTPError as e:
            print(f"[{system}] validation failed: {e}", flush=True)
        probe = r.run(f"probe_n{SWEEP_N}", SWEEP_N, 1.0, math.inf, num=plan.probe_requests)
        s0 = max(req_rate(probe), 1e-3)
        sweep, offered = [], 1.5 * s0
        for step in range(plan.sweep_steps):
            res = r.run(f"sweep_n{SWEEP_N}_{step}", SWEEP_N, 1.0, offered)
            sweep.append(res)
            if res is None or not keeps_up(res):
                break
            offered *= plan.sweep_growth
        saturation = max(req_rate(x) for x in [probe, *sweep])
        rate = plan.load * max(saturation, 1e-3)
        print(f"[{system}] probe {s0:.3f} req/s, saturation {saturation:.3f} req/s -> R* = {rate:.3f} req/s",
              flush=True)
        grid = [(n, 1.0) for n in sorted(plan.ns, key=lambda n: (n != SWEEP_N, -n))]
        grid += [(n, 0.1) for n in plan.skew_free_ns]
        for i, (n, alpha) in enumerate(grid):
            r.run(f"grid_n{n}_a{alpha:g}", n, alpha, rate)
            if i == 1:  # the base model alone comes right after n = 100 and n = 1000
                base = r.run("base_probe", 0, 1.0, math.inf, num=plan.probe_requests)
                r.run("base_saturated", 0, 1.0, 1.5 * max(req_rate(base), 1e-3))
    finally:
        process.stop(server)
    for res in r.results:
        res["meta"].update(saturation_req_per_s=saturation if "saturation" in locals() else None,
                           operating_rate=rate if "rate" in locals() else None,
                           server_command=abbreviate(server.command))
        Path(out_dir / f"{system}_{res['meta']['tag']}.json").write_text(json.dumps(res, indent=1))
    return r.results, r.skipped


def abbreviate(cmd: list[str]) -> str:
    """The server command with a long --lora-modules list (vLLM) or --lora-scaled list (llama-server) cut to its
    first entry and a count."""
    out, i = [], 0
    while i < len(cmd):
        out.append(cmd[i])
        if cmd[i] == "--lora-modules":
            mods = [c for c in cmd[i + 1 :] if "=" in c and not c.startswith("--")]
            out += [mods[0], f"... ({len(mods)} entries, synth-NNNN=DIR/synth-NNNN)"]
            i += len(mods)
        elif cmd[i] == "--lora-scaled" and i + 1 < len(cmd):
            entries = cmd[i + 1].split(",")
            out.append(entries[0] + (f",... ({len(entries)} entries, DIR/NAME.gguf:0)" if len(entries) > 1 else ""))
            i += 1
        i += 1
    return " ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default="bench/results/serve")
    ap.add_argument("--systems", default="loraplex,peft,vllm-cpu", help=f"comma-separated from {sorted(SYSTEMS)}")
    ap.add_argument("--ns", default="1,10,100,1000")
    ap.add_argument("--skew-free-ns", default="100", help="n at which alpha = 0.1 is measured too")
    ap.add_argument("--sweep-growth", type=float, default=2.0, help="rate multiplier between sweep steps")
    ap.add_argument("--sweep-steps", type=int, default=3, help="most sweep runs (it stops once saturated)")
    ap.add_argument("--load", type=float, default=0.8, help="operating rate as a fraction of saturation")
    ap.add_argument("--probe-requests", type=int, default=8)
    ap.add_argument("--run-duration", type=float, default=45.0, help="seconds requests leave for, per run")
    ap.add_argument("--drain", type=float, default=60.0, help="seconds in-flight requests get after that")
    ap.add_argument("--max-requests", type=int, default=300, help="most requests per run")
    ap.add_argument("--prompt-len", default="16,64")
    ap.add_argument("--output-len", default="16,48")
    ap.add_argument("--slo-ttft", type=float, default=2.0)
    ap.add_argument("--budget-min", type=float, default=45.0, help="total wall-time budget, shared equally")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: loraplex and peft unless --systems says otherwise, n = 1 and 100, short runs")
    ap.add_argument("--report-only", action="store_true", help="rebuild summary and charts from --out-dir")
    args = ap.parse_args()
    out_dir = Path(args.out_dir)
    if args.report_only:
        write_report(out_dir)
        return
    if args.quick:
        if "--systems" not in sys.argv:
            args.systems = "loraplex,peft"
        args.ns, args.skew_free_ns, args.sweep_steps = "1,100", "", 1
        args.probe_requests, args.run_duration, args.drain = 4, 15.0, 20.0
        args.budget_min = min(args.budget_min, 4.0 * len(args.systems.split(",")))
    ints = lambda s: tuple(int(x) for x in s.split(",") if x)  # noqa: E731
    plan = Plan(tuple(args.systems.split(",")), ints(args.ns), ints(args.skew_free_ns),
                args.sweep_growth, args.sweep_steps, args.load, args.probe_requests,
                args.run_duration, args.drain, args.max_requests, args.prompt_len, args.output_len, args.slo_ttft,
                args.budget_min, args.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    export_base_model()
    adapters_dir(max(plan.ns + plan.skew_free_ns))  # written once, before any clock starts
    share = plan.budget_min * 60 / len(plan.systems)
    skipped, failed = [], []
    for i, system in enumerate(plan.systems):
        deadline = t0 + share * (i + 1)
        try:
            _, sk = measure(plan, system, out_dir, deadline, process.free_port())
            skipped += sk
        except RuntimeError as e:  # a peer that cannot start or dies is a result, not a crash of the driver
            print(f"[{system}] FAILED: {e}", flush=True)
            failed.append({"system": system, "error": str(e)[-3000:]})
    run_info = {"plan": asdict(plan), "command": " ".join(sys.argv), "wall_s": time.monotonic() - t0,
                "skipped": skipped, "failed": failed}
    (out_dir / "run.json").write_text(json.dumps(run_info, indent=1))
    write_report(out_dir)
    print(f"done in {(time.monotonic() - t0) / 60:.1f} min; {out_dir / 'summary.md'}")


if __name__ == "__main__":
    main()
