"""Request-level Arrow scoring variants, chosen on the demo set by their routing margin, then reported on both sets.

Issue 17's remaining Arrow misses (validation: title-casing a list of foods scored as sorting one) asked whether
a principled change of the score closes them. Variants, each zero-shot from the adapters' weights and the same
generic prompts (router/arrow.py NEUTRAL_PROMPTS):
- `arrow`: the router as served: mean |cos(x, v)| over tokens and targeted projections, over the same on
  generic text.
- `centred`: x minus its mean over the generic prompts' tokens at that projection before the cosine: the
  direction every input shares (and every prototype partly aligns with) carries no task signal. The input-side
  analogue of PEFT's GenKnowSub, which subtracts a general-knowledge LoRA from each task LoRA before the
  prototypes (no general-knowledge LoRA exists here).
- `top3`: the top 3 right singular vectors of B A instead of the top one, each |cos| weighted by its singular
  value's share (how much of the delta each input direction drives).
- `last_half`: only the prompt's last half of tokens (the instruction's cue sits at the end; leading list items
  are shared between tasks). A token weighting, as the Arrow paper's mean over tokens is one.
The demo set routes 100% with every variant, so the choice is by margin: the median over demo prompts of the
right adapter's score over the best wrong one's (higher separates better); the validation set chooses nothing.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.arrow_variants --out bench/results/router/arrow_variants.json
"""

import argparse
import json
import statistics
from pathlib import Path

import torch
from torch.nn.functional import normalize

from bench.report_file import emit
from router.arrow import NEUTRAL_PROMPTS
from server.config import EngineConfig
from server.engine.llm_engine import LLMEngine

REPO = Path(__file__).resolve().parents[1]
SETS = {"demo": REPO / "server" / "adapters" / "demo", "validation": REPO / "bench" / "validation"}
VARIANTS = ("arrow", "centred", "top3", "last_half")
MAX_TOKENS = 256  # as ArrowOptions.max_tokens


def singular(a: torch.Tensor, b: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top r right singular vectors (r, in) of B A and their singular values (r,), without forming B A."""
    a, b = a.double(), b.double()
    q, rr = torch.linalg.qr(a.T)  # (in, rank), (rank, rank)
    m = b @ rr.T  # (out, rank)
    evals, evecs = torch.linalg.eigh(m.T @ m)  # ascending
    r = min(r, evals.shape[0])
    v = (q @ evecs[:, -r:].flip(1)).T  # (r, in)
    return normalize(v, dim=1).float(), evals[-r:].flip(0).clamp(min=0).sqrt().float()


def raw(features: dict, protos: dict, variant: str, centre: dict) -> float:
    """One adapter's raw score on one prompt's features under a variant."""
    per_key = []
    for k, (v, s) in protos.items():
        x = features[k].float()  # (T, in)
        if variant == "centred":
            x = x - centre[k]
        if variant == "last_half":
            x = x[x.shape[0] // 2:]
        c = (normalize(x, dim=-1) @ (v.T if variant == "top3" else v[:1].T)).abs()  # (T, r)
        w = s / s.sum() if variant == "top3" else torch.ones(1)
        per_key.append(float((c * w).sum(1).mean()))
    return sum(per_key) / len(per_key)


def evaluate(folder: Path) -> dict:
    engine = LLMEngine.from_config(EngineConfig(max_model_len=512, max_num_seqs=8, dtype="float32"))
    engine.registry.register_dir(folder / "adapters")
    protos = {}
    for ref in engine.registry:
        w = engine.registry.weights(ref)
        protos[ref.name] = {k: singular(w.a[k], w.b[k], 3) for k in w.a}
    keys = set().union(*protos.values())

    def feats(text: str) -> dict:
        return engine.prompt_features(engine.tokenizer(text)["input_ids"][:MAX_TOKENS], keys)

    neutral = [feats(t) for t in NEUTRAL_PROMPTS]
    centre = {k: torch.cat([f[k].float() for f in neutral]).mean(0) for k in keys}  # (in,) per key
    base = {(v, a): statistics.mean(raw(f, p, v, centre) for f in neutral) for v in VARIANTS for a, p in protos.items()}
    rows = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines()]
    out = {v: {"right": 0, "margins": [], "confusions": {}} for v in VARIANTS}
    for r in rows:
        f = feats(r["prompt"])
        for v in VARIANTS:
            scores = {a: raw(f, p, v, centre) / base[v, a] for a, p in protos.items()}
            top = max(scores, key=scores.get)
            wrong = max(s for a, s in scores.items() if a != r["task"])
            o = out[v]
            o["right"] += top == r["task"]
            o["margins"].append(scores[r["task"]] / wrong)
            if top != r["task"]:
                o["confusions"][f"{r['task']}->{top}"] = o["confusions"].get(f"{r['task']}->{top}", 0) + 1
    return {v: {"routing_accuracy": round(o["right"] / len(rows), 4),
                "margin_median": round(statistics.median(o["margins"]), 4),
                "margin_min": round(min(o["margins"]), 4), "confusions": o["confusions"]} for v, o in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    demo = evaluate(SETS["demo"])
    chosen = max(VARIANTS, key=lambda v: (demo[v]["routing_accuracy"], demo[v]["margin_median"]))
    rep = {"command": "OMP_NUM_THREADS=1 .venv/bin/python -m bench.arrow_variants "
                      "--out bench/results/router/arrow_variants.json",
           "note": "chosen on the demo set: routing accuracy, then the median margin (right adapter's score over "
                   "the best wrong one's); the validation set is reported, never used to choose",
           "chosen_on_demo": chosen, "demo": demo, "validation": evaluate(SETS["validation"])}
    emit(rep, args.out)


if __name__ == "__main__":
    main()
