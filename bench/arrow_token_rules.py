"""Development run behind per-token Arrow's mixed=base (demo set only): weight rules tried through a torch
rule swapped in for ops.arrow_apply, before the chosen one went into the kernels.

Rules (JSON, one per argument): "peft" (PEFT's raw |x . v|); "base" (where only some candidates target the
projection: |cos| / level, the base competing at `base` (default 1), softmax at `T`); "base-all" (the same at
every projection). Levels per (adapter, layer, module), or per adapter with --scalar (what the router ships).
`k`: top_k (default 2). Prints each rule's demo accuracy, per task.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/arrow_token_rules.py demo 50 '{"name": "peft"}' \
        '{"name": "base", "T": 0.25}' [--scalar]
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.functional import normalize

import kernels.ops as ops
from bench.arrow_token_accuracy import generate
from kernels.torch.arrow import arrow_apply as twin
from kernels.torch.arrow import arrow_weights, entry_weights
from router.arrow import NEUTRAL_PROMPTS
from router.prototypes import adapter_prototypes
from server.adapters.types import MODULES
from server.config import EngineConfig
from server.engine.llm_engine import LLMEngine

ROOT = Path(__file__).resolve().parents[1]
RULE: dict = {"name": "peft", "T": 1.0}


def main() -> None:
    scalar = "--scalar" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--scalar"]
    folder = ROOT / "server/adapters/demo" if args[0] == "demo" else Path(args[0])
    n_per, configs = int(args[1]), [json.loads(c) for c in args[2:]]
    engine = LLMEngine.from_config(EngineConfig(max_model_len=512, max_num_seqs=64, dtype="float32"))
    engine.registry.register_dir(folder / "adapters")
    refs = list(engine.registry)
    protos = {}
    for r in refs:
        w = engine.registry.weights(r)
        protos[r.name] = adapter_prototypes(w.a, w.b)
    keys = set().union(*protos.values())
    feats = [engine.prompt_features(engine.tokenizer(t)["input_ids"], keys) for t in NEUTRAL_PROMPTS]
    level = {(a, k): float(torch.cat([(normalize(f[k].float(), dim=-1) @ v).abs() for f in feats]).mean())
             for a, ps in protos.items() for k, v in ps.items()}  # (adapter, key) -> mean |cos| on generic text
    if scalar:
        means = {a: statistics.mean(level[a, k] for k in ps) for a, ps in protos.items()}
        level = {(a, k): means[a] for a, k in level}
    off2level: dict[int, float] = {}

    def refresh() -> None:
        for r in refs:
            t = engine.adapters.factor_offsets(r.id, "proto")
            for layer in range(t.shape[0]) if t is not None else ():
                for m in range(t.shape[1]):
                    if t[layer, m] >= 0 and (r.name, (layer, MODULES[m])) in level:
                        off2level[int(t[layer, m])] = level[r.name, (layer, MODULES[m])]

    def weigh(x, pool, proto_offsets, arrow):
        w = arrow_weights(x, pool, proto_offsets, arrow)  # (R, C), PEFT's rule
        if RULE["name"] == "peft":
            return entry_weights(w, arrow)
        R, C = arrow.cand_slots.shape
        po = proto_offsets[arrow.cand_slots.clamp(min=0)]  # (R, C)
        valid = (arrow.cand_slots >= 0) & (po >= 0)
        mixed = valid.any(1) & (valid != (arrow.cand_slots >= 0)).any(1)  # (R,)
        if RULE["name"] == "base-all":
            mixed = valid.any(1)
        if mixed.any():
            if any(int(o) not in off2level for o in po[valid].unique().tolist()):
                refresh()
            lv = torch.tensor([[off2level.get(int(o), 1.0) for o in row] for row in po.tolist()])  # (R, C)
            v = pool[po.clamp(min=0)[..., None] + torch.arange(x.shape[1])].float()  # (R, C, in)
            xs = normalize(x.index_select(0, arrow.rows).float(), dim=-1)  # (R, in)
            u = ((v @ xs[:, :, None])[..., 0].abs() / lv).masked_fill(~valid, float("-inf"))  # (R, C)
            u = torch.cat([u, torch.full((R, 1), RULE.get("base", 1.0))], 1)  # the base competes
            k = min(arrow.max_top_k, C + 1)
            top, at = u.topk(k, dim=1)
            top = top.masked_fill(torch.arange(k) >= arrow.top_k[:, None], float("-inf"))
            ww = torch.where(torch.isfinite(top), (top / RULE.get("T", 1.0)).softmax(1), 0.0)
            w = torch.where(mixed[:, None], torch.zeros(R, C + 1).scatter_(1, at, ww)[:, :C], w)
        return entry_weights(w, arrow)

    ops.arrow_apply = lambda x, out, pool, a, b, p, arrow: twin(x, out, pool, a, b, p, arrow, ops._lora_apply_rows,
                                                                 weigh=weigh)
    max_tokens = {r.name: json.loads((r.path / "loraplex.json").read_text())["max_tokens"] for r in refs}
    cands = tuple((n, 1.0) for n in sorted(max_tokens))
    by: dict[str, list] = {}
    for row in (json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines()):
        by.setdefault(row["task"], []).append(row)
    rows = [r for t in by.values() for r in t[:n_per]]
    for cfg in configs:
        RULE.clear()
        RULE.update(cfg)
        t0 = time.time()
        jobs = [(r["prompt"], ("token", cfg.get("k", 2), 1.0, cands, None), max_tokens[r["task"]]) for r in rows]
        ok = [o == r["answer"] for o, r in zip(generate(engine, jobs), rows, strict=True)]
        per = {t: sum(o for o, r in zip(ok, rows, strict=True) if r["task"] == t) for t in by}
        print(json.dumps(cfg), round(sum(ok) / len(ok), 3), per, f"{time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
