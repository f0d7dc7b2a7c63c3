"""Candidate recall of per-token Arrow (router/arrow_token.py): is the adapter a prompt's task needs among
the M candidates its request gets?

For each held-out prompt (eval.jsonl of a set: the demo adapters, bench/validation's), rank every adapter
three ways and report recall@M for M = 1..N:
  proxy      - the per-token router's ranking: prompt-level Arrow score on proxy inputs (token embeddings
               through each layer's RMSNorm), no forward pass (what `mode=token` does);
  pass       - request-level Arrow's score from a routing pass over the prompt (the base model's real
               projection inputs, +1 prefill): the upper bound of ranking by the prototypes;
  pass16     - the same pass over the prompt's first 16 tokens only.

    .venv/bin/python -m bench.arrow_candidates [--set demo|validation|both] [--out FILE]
"""

import argparse
import json
import time
from pathlib import Path

from bench.report_file import emit
from server.api.routing import Routers
from server.config import EngineConfig
from server.engine.async_engine import AsyncEngine
from server.engine.llm_engine import LLMEngine

ROOT = Path(__file__).resolve().parents[1]
SETS = {"demo": ROOT / "server" / "adapters" / "demo", "validation": ROOT / "bench" / "validation"}


def recall(ranks: list[list[str]], tasks: list[str], n: int) -> dict[int, float]:
    return {m: round(sum(t in r[:m] for r, t in zip(ranks, tasks, strict=True)) / len(tasks), 4)
            for m in range(1, n + 1)}


def evaluate(folder: Path) -> dict:
    engine = LLMEngine.from_config(EngineConfig(max_model_len=512))
    engine.registry.register_dir(folder / "adapters")
    specs = {"req": "arrow:fallback=off", "tok": "arrow:mode=token,rank=proxy,fallback=off"}
    routers = Routers(AsyncEngine(engine), specs)
    req, tok = routers.routers["req"], routers.routers["tok"]
    rows = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines()]
    names = sorted(ref.name for ref in engine.registry)
    tasks = [r["task"] for r in rows]
    ranks: dict[str, list[list[str]]] = {"proxy": [], "pass": [], "pass16": []}
    seconds = {k: 0.0 for k in ranks}
    keys = req.feature_keys()
    for r in rows:
        ids = engine.tokenizer(r["prompt"])["input_ids"][:256]
        t0 = time.perf_counter()
        ranks["proxy"].append([a for a, _ in tok.ranked(ids)])
        seconds["proxy"] += time.perf_counter() - t0
        for name, cut in (("pass", len(ids)), ("pass16", 16)):
            t0 = time.perf_counter()
            scores = req.scores(engine.prompt_features(ids[:cut], keys))
            seconds[name] += time.perf_counter() - t0
            ranks[name].append(sorted(scores, key=lambda a: -scores[a]))
    return {
        "adapters": names,
        "prompts": len(rows),
        "unscored_by_proxy": list(tok._unscored),
        "recall_at_m": {k: recall(v, tasks, len(names)) for k, v in ranks.items()},
        "ms_per_prompt": {k: round(1000 * s / len(rows), 2) for k, s in seconds.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", choices=["demo", "validation", "both"], default="both")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    sets = ["demo", "validation"] if args.set == "both" else [args.set]
    rep: dict = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python -m bench.arrow_candidates "
                   "--out bench/results/router/arrow_candidates.json",
        "note": "recall_at_m[ranking][M]: share of held-out prompts whose task's adapter is among the top M; "
                "ms_per_prompt measured under load (five other helpers share this 2-core machine)",
    }
    rep.update({s: evaluate(SETS[s]) for s in sets if (SETS[s] / "eval.jsonl").exists()})
    emit(rep, args.out)


if __name__ == "__main__":
    main()
