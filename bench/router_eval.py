"""Routing on held-out demo prompts: routing accuracy per router kind, task accuracy with the router
vs the right adapter named (oracle) vs the base model, and the time routing adds to the first token.

Held-out prompts: server/adapters/demo/eval.jsonl (never used to train the adapters nor as router
examples). Task accuracy = exact match of the first output line, greedy, as the demo trainer scores.

    python bench/router_eval.py --out bench/results/router_eval.json
"""

import argparse
import json
import time
from pathlib import Path

import torch

from server.api.routing import Routers
from server.config import EngineConfig
from server.engine.llm_engine import EngineRequest, LLMEngine
from server.engine.sampling_params import SamplingParams

DEMO = Path(__file__).resolve().parents[1] / "server" / "adapters" / "demo"


def answers(engine, rows, adapters: list[str | None], max_tokens: dict[str, int]) -> list[str]:
    for i, (row, adapter) in enumerate(zip(rows, adapters, strict=True)):
        ids = engine.tokenizer(row["prompt"])["input_ids"]
        params = SamplingParams(max_tokens=max_tokens[row["task"]], temperature=0)
        engine.add_request(EngineRequest(f"q{i}", ids, params, adapter))
    text: dict[str, str] = {}
    while engine.has_work():
        for d in engine.step():
            text[d.request_id] = text.get(d.request_id, "") + d.text
    return [text.get(f"q{i}", "").split("\n")[0].strip() for i in range(len(rows))]


def accuracy(outs: list[str], rows) -> float:
    return sum(o == r["answer"] for o, r in zip(outs, rows, strict=True)) / len(rows)


def ttft(engine, ids, adapter) -> float:
    engine.add_request(EngineRequest("t", ids, SamplingParams(max_tokens=1, temperature=0), adapter))
    t0 = time.perf_counter()
    while engine.has_work():
        engine.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    engine = LLMEngine.from_config(EngineConfig(max_model_len=512, max_num_seqs=64))
    engine.registry.register_dir(DEMO / "adapters")
    rules = DEMO / "router_rules.json"
    routers = Routers(engine, {"auto": "embedding", "ops": f"rules:{rules}"})
    rows = [json.loads(line) for line in (DEMO / "eval.jsonl").read_text().splitlines()]
    max_tokens = {ref.name: json.loads((ref.path / "loraplex.json").read_text())["max_tokens"]
                  for ref in engine.registry}

    report: dict = {"held_out_prompts": len(rows), "routing_accuracy": {}, "route_ms_mean": {}}
    chosen: dict[str, list[str | None]] = {}
    for name in ("auto", "ops"):
        t0 = time.perf_counter()
        decisions = [routers.route(name, r["prompt"]) for r in rows]
        report["route_ms_mean"][name] = (time.perf_counter() - t0) / len(rows) * 1e3
        chosen[name] = [d.adapter for d in decisions]
        hits = sum(c == r["task"] for c, r in zip(chosen[name], rows, strict=True))
        report["routing_accuracy"][name] = hits / len(rows)

    task = {}
    task["oracle"] = accuracy(answers(engine, rows, [r["task"] for r in rows], max_tokens), rows)
    task["base"] = accuracy(answers(engine, rows, [None] * len(rows), max_tokens), rows)
    task["auto (embedding)"] = accuracy(answers(engine, rows, chosen["auto"], max_tokens), rows)
    report["task_accuracy"] = task
    report["auto_vs_oracle"] = task["auto (embedding)"] / task["oracle"]

    # TTFT of a request named explicitly vs routed first (routing runs before the engine sees it)
    ids = engine.tokenizer(rows[0]["prompt"])["input_ids"]
    ttft(engine, ids, rows[0]["task"])  # warm: adapter resident
    named = min(ttft(engine, ids, rows[0]["task"]) for _ in range(5))
    route_s = report["route_ms_mean"]["auto"] / 1e3
    report["ttft_ms"] = {"named": named * 1e3, "routed": (named + route_s) * 1e3}
    report["ttft_overhead"] = route_s / named
    report["dtype"] = engine.config.dtype
    report["command"] = "python bench/router_eval.py"
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
