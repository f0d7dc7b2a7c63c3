"""The server's threads while it serves: each thread's CPU time, run-queue wait and context switches
(/proc/<pid>/task/*/schedstat) over bench.peers.llama_server_compare's workload, for this checkout and, with
--ref REV, another revision (checked out in a git worktree) in turn, in the same run.

    python -m bench.serve_threads --ref b1b306a --rounds 2 --weights fp32 --out bench/results/serve/threads_s9.json

The two busiest threads are the engine thread and its OpenMP worker; their context switches per step show
whether the team spins through its barriers (a few a step) or sleeps at each (libgomp with a second idle team).
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.peers import process
from bench.peers.llama_server_compare import IN_FLIGHT, _loraplex, _run
from bench.peers.systems import REPO
from bench.report_file import emit

OUTPUT_TOKENS = 48  # bench.peers.llama_server_compare's workload


def _snapshot(pid: int) -> dict[int, tuple[int, int, int]]:
    """tid -> (ns on CPU, ns waiting on a run queue, times switched in)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run, wait, slices = (int(x) for x in f.read().split())
        except (OSError, ValueError):  # a thread that ended meanwhile
            continue
        out[int(tid)] = (run, wait, slices)
    return out


def _threads(before: dict, after: dict, pid: int) -> list[dict]:
    rows = []
    for tid, (run, wait, slices) in after.items():
        r0, w0, s0 = before.get(tid, (0, 0, 0))
        rows.append({"tid": tid, "main": tid == pid, "cpu_s": round((run - r0) / 1e9, 3),
                     "runqueue_wait_s": round((wait - w0) / 1e9, 3), "switches": slices - s0})
    return sorted(rows, key=lambda r: -r["cpu_s"])[:4]


def measure(src: Path, args, work: Path, port: int) -> dict:
    server = _loraplex(port, args.n, work / "server.log", args.threads, args.weights, src)
    try:
        _run(server, "warm-up", args.n, argparse.Namespace(requests=8), work / "warm.json", False)
        before = _snapshot(server.proc.pid)
        row = _run(server, "run", args.n, args, work / "run.json", False)
        threads = _threads(before, _snapshot(server.proc.pid), server.proc.pid)
    finally:
        process.stop(server)
    steps = args.requests * OUTPUT_TOKENS / IN_FLIGHT  # decode steps at least; prefill chunks add a few
    team = threads[:2]  # the engine thread and its OpenMP worker: the two busiest
    return {**row, "threads": threads, "team_switches_per_step": [round(t["switches"] / steps, 1) for t in team]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", default=None, help="a git revision measured beside this checkout")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--weights", default="fp32")
    ap.add_argument("--n", type=int, default=0, help="synthetic adapters in play (Zipf 1); 0 = base only")
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        srcs = {"this": REPO}
        if args.ref:
            srcs[args.ref] = Path(tmp) / "ref"
            subprocess.run(["git", "worktree", "add", "--detach", str(srcs[args.ref]), args.ref], cwd=REPO,
                           check=True, capture_output=True)
        try:
            rounds = []
            for i in range(args.rounds):
                order = list(srcs) if i % 2 == 0 else list(srcs)[::-1]  # each goes first in turn
                rounds.append({name: measure(srcs[name], args, Path(tmp) / name, process.free_port())
                               for name in order})
                print({k: (v["tok_per_s"], v["team_switches_per_step"]) for k, v in rounds[-1].items()},
                      file=sys.stderr)
        finally:
            if args.ref:
                subprocess.run(["git", "worktree", "remove", "--force", str(srcs[args.ref])], cwd=REPO, check=False)
    emit({"command": "python -m bench.serve_threads " + " ".join(sys.argv[1:]),
          "workload": f"{args.requests} completions at once, {IN_FLIGHT} in flight, prompts 16-64 tokens, "
                      f"{OUTPUT_TOKENS} output tokens, greedy, {args.n} adapters (Zipf 1), weights {args.weights}",
          "rounds": rounds}, args.out)


if __name__ == "__main__":
    main()
