"""Task accuracy of per-token Arrow vs request-level Arrow vs the oracle (the right adapter named), on
single-task held-out prompts and on composite prompts that need two adapters in sequence, one table.

Per-token options (top_k, temperature, mixed) are chosen on the demo set and reported on the validation
set (bench/validation, adapters never used to choose anything); PEFT's rule with the options it was chosen
with before (mixed=peft, top_k=2, T=1) is reported beside it. `mixed=base` takes each candidate's level
from the `arrow:mode=token` router's calibration (router/arrow_token.py). Every adapter is a candidate (both
sets have at most 8), so per-token mode runs no routing pass; rows `candidates=M` restrict the chosen
configuration's candidates to the request-level top M instead (a routing pass per request, as request-level
Arrow), reported on both sets after the choice. Greedy, fp32; outputs are scored as bench/router_eval.py
does (first line, exact match).

    .venv/bin/python -m bench.arrow_token_accuracy --out bench/results/router/arrow_token_accuracy.json
"""

import argparse
import json
from pathlib import Path

from bench.report_file import emit
from server.api.routing import Routers
from server.config import EngineConfig
from server.engine.async_engine import AsyncEngine
from server.engine.llm_engine import EngineRequest, LLMEngine
from server.engine.sampling_params import SamplingParams
from server.engine.sequence import TokenRouting

ROOT = Path(__file__).resolve().parents[1]
SETS = {"demo": ROOT / "server" / "adapters" / "demo", "validation": ROOT / "bench" / "validation"}
# (top_k, temperature, mixed) tried on the demo set; mixed=base scores |cos| / level, so its temperatures are smaller
GRID = [(1, 1.0, "peft"), (2, 1.0, "peft"), (2, 10.0, "peft"), (1, 1.0, "base"), (2, 0.25, "base"), (2, 1.0, "base")]
PEFT = (2, 1.0, "peft")
TOP_M = (1, 2)  # candidate sets restricted to the request-level top M (a routing pass), reported beside


def generate(engine, jobs: list[tuple[str, object, int]]) -> list[str]:
    """jobs: (prompt, choice, max_tokens); choice: adapter name, None (base), a mixture tuple or
    ("token", top_k, temperature, candidates, levels). First output line of each, greedy."""
    for i, (prompt, choice, n) in enumerate(jobs):
        ids = engine.tokenizer(prompt)["input_ids"]
        params = SamplingParams(max_tokens=n, temperature=0)
        if isinstance(choice, tuple) and choice and choice[0] == "token":
            _, k, t, cands, levels = choice
            req = EngineRequest(f"q{i}", ids, params, mixture=cands, routing=TokenRouting(k, t, levels))
        elif isinstance(choice, tuple):
            req = EngineRequest(f"q{i}", ids, params, mixture=choice)
        else:
            req = EngineRequest(f"q{i}", ids, params, choice)
        engine.add_request(req)
    text: dict[str, str] = {}
    while engine.has_work():
        for d in engine.step():
            text[d.request_id] = text.get(d.request_id, "") + d.text
    return [text.get(f"q{i}", "").split("\n")[0].strip() for i in range(len(jobs))]


def evaluate(folder: Path, grid: list[tuple[int, float, str]], top_m: tuple[int, ...] = ()) -> dict:
    """top_m: candidate-set sizes tried with grid[0] (the chosen configuration), ranked by a routing pass."""
    engine = LLMEngine.from_config(EngineConfig(max_model_len=512, max_num_seqs=64, dtype="float32"))
    engine.registry.register_dir(folder / "adapters")
    specs = {"arrow": "arrow", "token": "arrow:mode=token"}
    k0, t0, mixed0 = grid[0]
    specs |= {f"m{m}": f"arrow:mode=token,candidates={m},top_k={k0},temperature={t0},mixed={mixed0}" for m in top_m}
    routers = Routers(AsyncEngine(engine), specs)
    max_tokens = {ref.name: json.loads((ref.path / "loraplex.json").read_text())["max_tokens"]
                  for ref in engine.registry}
    d = routers.route("token", "x")  # every adapter fits in the candidate set: no pass; levels in routing[2]
    cands = tuple((n, 1.0) for n, _ in d.adapters)
    levels = {"peft": None, "base": d.routing[2]}
    rows = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines()]
    comp_file = folder / "composite.jsonl"
    chains = [json.loads(x) for x in comp_file.read_text().splitlines() if x] if comp_file.is_file() else []

    def request_arrow(prompt: str):
        d = routers.route("arrow", prompt)
        return tuple(d.adapters) if len(d.adapters) > 1 else d.adapter

    picks = {"oracle": lambda p, t: t, "base": lambda p, t: None, "arrow (request)": lambda p, t: request_arrow(p)}
    for k, temp, mixed in grid:
        picks[f"arrow per token (top_k={k}, T={temp:g}, mixed={mixed})"] = (
            lambda p, t, k=k, temp=temp, lv=levels[mixed]: ("token", k, temp, cands, lv))

    def restricted(prompt: str, m: int):
        d = routers.route(f"m{m}", prompt)
        return ("token", k0, t0, tuple(d.adapters), d.routing[2] if len(d.routing) > 2 else None)

    for m in top_m:
        picks[f"arrow per token (top_k={k0}, T={t0:g}, mixed={mixed0}), candidates={m}"] = (
            lambda p, t, m=m: restricted(p, m))
    single, comp = {}, {}
    for label, pick in picks.items():
        outs = generate(engine, [(r["prompt"], pick(r["prompt"], r["task"]), max_tokens[r["task"]]) for r in rows])
        single[label] = round(sum(o == r["answer"] for o, r in zip(outs, rows, strict=True)) / len(rows), 4)
        if chains:
            first = generate(engine, [(c["prompt"], pick(c["prompt"], c["tasks"][0]), max_tokens[c["tasks"][0]])
                                      for c in chains])
            second = [c["template"].format(prev=o) for c, o in zip(chains, first, strict=True)]
            outs = generate(engine, [(p, pick(p, c["tasks"][1]), max_tokens[c["tasks"][1]])
                                     for p, c in zip(second, chains, strict=True)])
            comp[label] = round(sum(o == c["answer"] for o, c in zip(outs, chains, strict=True)) / len(chains), 4)
    return {"adapters": sorted(max_tokens), "prompts": len(rows), "chains": len(chains),
            "task_accuracy_single": single, "task_accuracy_composite": comp}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    demo = evaluate(SETS["demo"], GRID)
    token = {lbl: acc for lbl, acc in demo["task_accuracy_single"].items() if "per token" in lbl}
    best = max(token, key=token.get)
    k, temp, mixed = GRID[list(token).index(best)]
    rep = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python -m bench.arrow_token_accuracy "
                   "--out bench/results/router/arrow_token_accuracy.json",
        "note": "fp32 greedy; per-token options chosen on the demo set (best single-task accuracy), "
                "reported on the validation set beside PEFT's rule as chosen before; measured under load "
                "(accuracy does not depend on it)",
        "chosen_on_demo": {"top_k": k, "temperature": temp, "mixed": mixed},
        "demo": demo,
        "demo_top_m": evaluate(SETS["demo"], [(k, temp, mixed)], TOP_M)["task_accuracy_single"],
        "validation": evaluate(SETS["validation"], list(dict.fromkeys([(k, temp, mixed), PEFT])), TOP_M),
    }
    emit(rep, args.out)


if __name__ == "__main__":
    main()
