"""bench/engine.py and bench/adapters.py at two commits, interleaved in one run.

For refactors that must not change speed: each round runs both benchmarks in the "before" tree (a git
worktree at --before) and then in the "after" one (--after, default this working tree), same arguments,
fp32 weights on both sides; each side keeps its best round, and the report gives after / before per
figure. Each tree imports its own server/ and kernels/ (PYTHONPATH first), with this venv's packages.

    python bench/before_after.py --before f1ce1f7 --after 3ae8110 --out bench/results/before_after_issue14.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE_ARGS = ["--dtype", "float32", "--num-prompts", "16", "--prompt-len", "64", "--new-tokens", "32"]
ADAPTER_ARGS = ["--dtype", "float32", "--ns", "1,10,100", "--requests", "48", "--peft-n", "0", "--rounds", "1"]


def _run(tree: Path, script: str, args: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(tree / "bench" / script), *args, "--out", str(out)]
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def _figures(engine: dict, adapters: dict) -> dict[str, float]:
    """tok/s per figure: the engine's offline generate, and the adapters bench per configuration."""
    figs = {"engine loraplex": engine["results"]["loraplex"]["tokens_per_s"]}
    figs.update({f"adapters {k}": v["tokens_per_s"] for k, v in adapters["runs"].items()})
    return figs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="commit to compare against")
    ap.add_argument("--after", default=None, help="commit to compare (default: this working tree)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loraplex-before-after-"))
    before = work / "before"
    after = work / "after" if args.after else ROOT
    for tree, commit in ((before, args.before), (after, args.after)):
        if commit:
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
    best: dict[str, dict[str, float]] = {"before": {}, "after": {}}
    t0 = time.perf_counter()
    try:
        for rnd in range(args.rounds):
            for side, tree, extra in (("before", before, []), ("after", after, ["--weights", "fp32"])):
                engine = _run(tree, "engine.py", ENGINE_ARGS + extra, work / f"{side}-engine.json")
                adapters = _run(tree, "adapters.py", ADAPTER_ARGS + extra, work / f"{side}-adapters.json")
                for k, v in _figures(engine, adapters).items():
                    best[side][k] = max(v, best[side].get(k, 0.0))
                print(f"round {rnd} {side}: " + ", ".join(f"{k} {v:.1f}" for k, v in best[side].items()), flush=True)
    finally:
        for tree in (before, after):
            if tree != ROOT:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    ratios = {k: best["after"][k] / best["before"][k] for k in best["before"] if k in best["after"]}
    report = {
        "command": f"python bench/before_after.py --before {args.before}"
        + (f" --after {args.after}" if args.after else "") + f" --rounds {args.rounds}"
        + (f" --out {args.out}" if args.out else ""),
        "before_commit": args.before, "after_commit": args.after or "working tree",
        "engine_args": ENGINE_ARGS, "adapters_args": ADAPTER_ARGS,
        "tokens_per_s": best, "after_over_before": ratios, "seconds": time.perf_counter() - t0,
    }
    print(json.dumps(ratios, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
