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

from router.decision import RouteDecision
from server.api.routing import Routers
from server.config import EngineConfig
from server.engine.async_engine import AsyncEngine
from server.engine.llm_engine import EngineRequest, LLMEngine
from server.engine.sampling_params import SamplingParams

DEMO = Path(__file__).resolve().parents[1] / "server" / "adapters" / "demo"


def answers(engine, rows, choices: list, max_tokens: dict[str, int]) -> list[str]:
    """choices: per row an adapter name, None (base), or a RouteDecision (one adapter or a mixture)."""
    for i, (row, choice) in enumerate(zip(rows, choices, strict=True)):
        ids = engine.tokenizer(row["prompt"])["input_ids"]
        params = SamplingParams(max_tokens=max_tokens[row["task"]], temperature=0)
        if isinstance(choice, RouteDecision):
            mixture = choice.adapters if len(choice.adapters) > 1 else ()
            choice = None if mixture else choice.adapter
        else:
            mixture = ()
        engine.add_request(EngineRequest(f"q{i}", ids, params, choice, mixture))
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
    kinds = {"auto": "embedding", "ops": f"rules:{rules}", "arrow": "arrow", "arrow-top2": "arrow:top_k=2"}
    routers = Routers(AsyncEngine(engine), kinds)  # never started: routes run here, synchronously
    rows = [json.loads(line) for line in (DEMO / "eval.jsonl").read_text().splitlines()]
    max_tokens = {ref.name: json.loads((ref.path / "loraplex.json").read_text())["max_tokens"]
                  for ref in engine.registry}

    report: dict = {"held_out_prompts": len(rows), "routers": kinds, "routing_accuracy": {}, "route_ms_mean": {},
                    "mixtures": {}}
    chosen: dict[str, list[RouteDecision]] = {}
    for name in kinds:
        t0 = time.perf_counter()
        chosen[name] = [routers.route(name, r["prompt"]) for r in rows]
        report["route_ms_mean"][name] = (time.perf_counter() - t0) / len(rows) * 1e3
        hits = sum(d.adapter == r["task"] for d, r in zip(chosen[name], rows, strict=True))  # top-1 adapter
        report["routing_accuracy"][name] = hits / len(rows)
        report["mixtures"][name] = sum(len(d.adapters) > 1 for d in chosen[name])

    task = {}
    task["oracle"] = accuracy(answers(engine, rows, [r["task"] for r in rows], max_tokens), rows)
    task["base"] = accuracy(answers(engine, rows, [None] * len(rows), max_tokens), rows)
    for name in ("auto", "arrow", "arrow-top2"):
        task[name] = accuracy(answers(engine, rows, chosen[name], max_tokens), rows)
    report["task_accuracy"] = task
    report["vs_oracle"] = {name: task[name] / task["oracle"] for name in ("auto", "arrow", "arrow-top2")}

    # TTFT of a request named explicitly vs routed first (routing runs before the engine sees it)
    ids = engine.tokenizer(rows[0]["prompt"])["input_ids"]
    ttft(engine, ids, rows[0]["task"])  # warm: adapter resident
    named = min(ttft(engine, ids, rows[0]["task"]) for _ in range(5))
    report["ttft_ms_named"] = named * 1e3
    report["ttft_overhead"] = {name: ms / 1e3 / named for name, ms in report["route_ms_mean"].items()}
    report["dtype"] = engine.config.dtype
    report["command"] = "python bench/router_eval.py"
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
