"""Routers on two adapter sets side by side: the demo set, on which every router option was chosen, and the
validation set (bench/validation/, bench/adapter_tools/train_validation.py), which no option was tuned on.

Per set and router: routing accuracy on held-out prompts (top-1 adapter = the prompt's task), false-fallback
rate (an on-task prompt served by the base), true-fallback rate on off-task prompts
(bench/router_eval_prompts.py), task accuracy through the router vs the right adapter named (oracle) vs the
base, and on the validation set the composite prompts that need two adapters in sequence (the first
answer fills the second prompt; each step routed on its own). Task accuracy = exact match of the first
output line, greedy. Routing time and its share of the time to first token with the adapter named.

    OMP_NUM_THREADS=1 python -m bench.router_eval --out bench/results/router/router_eval.json
"""

import argparse
import json
import time
from pathlib import Path

import torch

from bench.router_eval_prompts import GENERIC_PROMPTS
from router.decision import RouteDecision
from server.api.routing import Routers
from server.config import EngineConfig
from server.engine.async_engine import AsyncEngine
from server.engine.llm_engine import EngineRequest, LLMEngine
from server.engine.sampling_params import SamplingParams

REPO = Path(__file__).resolve().parents[1]
SETS = {"demo": REPO / "server" / "adapters" / "demo", "validation": REPO / "bench" / "validation"}
# chosen on the demo set; `arrow-fixed` is the rule before issue 17 (a score threshold fitted on the demo set),
# `arrow-uncentred` Arrow's ranking before centring (bench/arrow_variants.py) and `auto-fixed` the embedding
# router's (a similarity threshold fitted on the demo set)
KINDS = {"auto": "embedding", "auto-fixed": "embedding:fallback=threshold,threshold=0.45", "arrow": "arrow",
         "arrow-top2": "arrow:top_k=2", "arrow-uncentred": "arrow:centre=off",
         "arrow-fixed": "arrow:fallback=threshold,threshold=1.25"}
TIMED = 20  # prompts whose routing is timed per router (each its own pass)

Choice = str | None | tuple[tuple[str, float], ...]  # adapter, base, or a mixture


def choice_of(d: RouteDecision) -> Choice:
    return tuple((a, round(w, 4)) for a, w in d.adapters) if len(d.adapters) > 1 else d.adapter


def generate(engine, jobs: list[tuple[str, Choice, int]]) -> list[str]:
    """jobs: (prompt, choice, max_tokens) -> the first output line of each, greedy."""
    for i, (prompt, choice, max_tokens) in enumerate(jobs):
        ids = engine.tokenizer(prompt)["input_ids"]
        mixture = choice if isinstance(choice, tuple) else ()
        adapter = None if mixture else choice
        engine.add_request(EngineRequest(f"q{i}", ids, SamplingParams(max_tokens=max_tokens, temperature=0),
                                         adapter, mixture))
    text: dict[str, str] = {}
    while engine.has_work():
        for d in engine.step():
            text[d.request_id] = text.get(d.request_id, "") + d.text
    return [text.get(f"q{i}", "").split("\n")[0].strip() for i in range(len(jobs))]


class Outputs:
    """Greedy outputs per (prompt, choice), each generated once: a router that picks the oracle's adapter
    gets the oracle's output."""

    def __init__(self, engine, max_tokens: dict[str, int]):
        self.engine, self.max_tokens, self.cache = engine, max_tokens, {}

    def get(self, items: list[tuple[str, str, Choice]]) -> list[str]:
        """items: (prompt, task, choice)."""
        todo = sorted({(p, c, self.max_tokens[t]) for p, t, c in items if (p, c) not in self.cache}, key=str)
        for (p, c, _), out in zip(todo, generate(self.engine, todo), strict=True):
            self.cache[p, c] = out
        return [self.cache[p, c] for p, _, c in items]


def rate(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else float("nan")


def evaluate(folder: Path) -> dict:
    # no prefix caching: ttft() repeats one prompt, and a cached prefix would time only its last block
    engine = LLMEngine.from_config(EngineConfig(max_model_len=512, max_num_seqs=64, prefix_caching=False))
    engine.registry.register_dir(folder / "adapters")
    routers = Routers(AsyncEngine(engine), KINDS)  # never started: routes run here, synchronously
    names = list(KINDS)
    rows = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines()]
    max_tokens = {ref.name: json.loads((ref.path / "loraplex.json").read_text())["max_tokens"]
                  for ref in engine.registry}
    outputs = Outputs(engine, max_tokens)
    rep: dict = {"adapters": sorted(max_tokens), "held_out_prompts": len(rows), "dtype": engine.config.dtype}

    chosen = [routers.route_all(r["prompt"], names) for r in rows]  # one routing pass per prompt for all
    generic = [routers.route_all(t, names) for t in GENERIC_PROMPTS]
    pairs = list(zip(chosen, rows, strict=True))
    rep["routing_accuracy"] = {n: rate(d[n].adapter == r["task"] for d, r in pairs) for n in names}
    rep["routing_accuracy_per_task"] = {n: {t: rate(d[n].adapter == t for d, r in pairs if r["task"] == t)
                                            for t in sorted(max_tokens)} for n in names}
    rep["false_fallback_rate"] = {n: rate(d[n].fell_back for d in chosen) for n in names}
    rep["true_fallback_rate_off_task"] = {n: rate(d[n].fell_back for d in generic) for n in names}
    rep["mixtures"] = {n: sum(len(d[n].adapters) > 1 for d in chosen) for n in names}
    emb = routers.routers["auto"]  # its fallback=generic margins: z of the adapter chosen, by its own generic bar
    tok = engine.tokenizer

    def z(text: str, d: RouteDecision) -> float:
        return emb.z(next(iter(d.scores)), tok(text)["input_ids"])  # scores: the best first

    rep["auto_z"] = {"bar": emb._built().bar,
                     "on_task_min": min(z(r["prompt"], d["auto"]) for d, r in pairs),
                     "off_task_max": max(z(t, d["auto"]) for d, t in zip(generic, GENERIC_PROMPTS, strict=True))}

    def task_acc(choices: list[Choice]) -> float:
        outs = outputs.get([(r["prompt"], r["task"], c) for r, c in zip(rows, choices, strict=True)])
        return rate(o == r["answer"] for o, r in zip(outs, rows, strict=True))

    acc = {"oracle": task_acc([r["task"] for r in rows]), "base": task_acc([None] * len(rows))}
    for n in names:
        acc[n] = task_acc([choice_of(d[n]) for d in chosen])
    rep["task_accuracy"] = acc
    rep["vs_oracle"] = {n: acc[n] / acc["oracle"] for n in names}

    comp_file = folder / "composite.jsonl"
    if comp_file.is_file():
        rep["composite"] = composite(routers, outputs, names, [json.loads(x) for x in comp_file.read_text().split("\n")
                                                                if x])

    ids = engine.tokenizer(rows[0]["prompt"])["input_ids"]
    ttft(engine, ids, rows[0]["task"])  # warm: adapter resident
    named = min(ttft(engine, ids, rows[0]["task"]) for _ in range(5))
    route_ms = {}
    for n in names:
        t0 = time.perf_counter()
        for r in rows[:: max(1, len(rows) // TIMED)][:TIMED]:
            routers.route(n, r["prompt"])
        route_ms[n] = (time.perf_counter() - t0) / TIMED * 1e3
    rep["ttft_ms_named"] = named * 1e3
    rep["route_ms_mean"] = route_ms
    rep["ttft_overhead"] = {n: ms / 1e3 / named for n, ms in route_ms.items()}
    return rep


def composite(routers: Routers, outputs: Outputs, names: list[str], chains: list[dict]) -> dict:
    """Each chain: step 1's output fills step 2's template; correct when step 2's output is the final answer."""
    def run(pick) -> tuple[float, float]:
        first = [(c["prompt"], c["tasks"][0], pick(c["prompt"], c["tasks"][0])) for c in chains]
        prompts2 = [c["template"].format(prev=o) for c, o in zip(chains, outputs.get(first), strict=True)]
        picks2 = [pick(p, c["tasks"][1]) for p, c in zip(prompts2, chains, strict=True)]
        outs = outputs.get([(p, c["tasks"][1], k) for p, c, k in zip(prompts2, chains, picks2, strict=True)])
        routed = rate(f[2] == c["tasks"][0] and k == c["tasks"][1]
                      for f, k, c in zip(first, picks2, chains, strict=True))
        return rate(o == c["answer"] for o, c in zip(outs, chains, strict=True)), routed

    out: dict = {"chains": len(chains), "task_accuracy": {}, "both_steps_routed": {}}
    for label, pick in [("oracle", lambda p, t: t), ("base", lambda p, t: None)] + [
            (n, lambda p, t, n=n: choice_of(routers.route(n, p))) for n in names]:
        out["task_accuracy"][label], routed = run(pick)
        if label not in ("oracle", "base"):
            out["both_steps_routed"][label] = routed
    out["vs_oracle"] = {n: out["task_accuracy"][n] / out["task_accuracy"]["oracle"] for n in names}
    return out


def ttft(engine, ids, adapter) -> float:
    engine.add_request(EngineRequest("t", ids, SamplingParams(max_tokens=1, temperature=0), adapter))
    t0 = time.perf_counter()
    while engine.has_work():
        engine.step()
    return time.perf_counter() - t0


def table(results: dict) -> str:
    lines = ["| set | router | routing acc. | false fallback | off-task fallback | task acc. (vs oracle) | "
             "composite (vs oracle) | routing ms | TTFT overhead |", "|---|---|---|---|---|---|---|---|---|"]
    for s, rep in results.items():
        acc = rep["task_accuracy"]
        lines.append(f"| {s} | oracle / base | — | — | — | {acc['oracle']:.2f} / {acc['base']:.2f} | " + (
            f"{rep['composite']['task_accuracy']['oracle']:.2f} / {rep['composite']['task_accuracy']['base']:.2f}"
            if "composite" in rep else "—") + " | — | — |")
        for n in KINDS:
            comp = rep.get("composite")
            lines.append(
                f"| {s} | `{n}` | {rep['routing_accuracy'][n]:.1%} | {rep['false_fallback_rate'][n]:.1%} | "
                f"{rep['true_fallback_rate_off_task'][n]:.0%} | {acc[n]:.2f} ({rep['vs_oracle'][n]:.2f}x) | "
                + (f"{comp['task_accuracy'][n]:.2f} ({comp['vs_oracle'][n]:.2f}x)" if comp else "—")
                + f" | {rep['route_ms_mean'][n]:.1f} | {rep['ttft_overhead'][n]:.0%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = {s: evaluate(SETS[s]) for s in args.sets.split(",")}
    report = {"command": f"OMP_NUM_THREADS={args.threads} python -m bench.router_eval --out {args.out}"
                         + (f" --sets {args.sets}" if args.sets != ",".join(SETS) else ""),
              "routers": KINDS, "options_chosen_on": "demo", "threads": args.threads,
              "note": "measured on a shared 2-core machine under load from other jobs: times are indicative",
              "wall_s": time.perf_counter() - t0, "sets": results, "table": table(results)}
    print(report["table"])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
