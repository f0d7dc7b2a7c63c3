"""Where per-token Arrow's TTFT overhead goes: one request's prefill and first token (demo prompts, 4 demo
candidates), named adapter vs per-token (top_k 2 and 1) vs per-token with arrow.c's call dropped from the
step plan (the rows then get no delta: the rest of the step's cost). Interleaved per prompt, first round
dropped, medians in ms. A diagnosis, not a result: bench/arrow_token.py is the TTFT measurement.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.arrow_token_share
"""

import argparse
import json
import statistics

from bench.arrow_token import DEMO, run
from server.api.routing import Routers
from server.config import EngineConfig
from server.engine.async_engine import AsyncEngine
from server.engine.llm_engine import EngineRequest, LLMEngine
from server.engine.sampling_params import SamplingParams
from server.engine.sequence import TokenRouting
from server.model import step_plan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.25)
    args = ap.parse_args()
    engine = LLMEngine.from_config(EngineConfig(max_model_len=512, max_num_seqs=64, dtype="float32",
                                                prefix_caching=False))
    engine.registry.register_dir(DEMO / "adapters")
    rows = [json.loads(line) for line in (DEMO / "eval.jsonl").read_text().splitlines()]
    rows = [rows[i * len(rows) // 16] for i in range(4)]
    ids = [engine.tokenizer(r["prompt"])["input_ids"] for r in rows]
    d = Routers(AsyncEngine(engine), {"token": "arrow:mode=token,mixed=base"}).route("token", "x")
    levels = d.routing[2] if len(d.routing) > 2 else None
    fields = step_plan.StepPlan._lora_fields

    def no_arrow(self, s, lora):
        made = fields(self, s, lora)
        s.ar_R = 0
        return made

    one = SamplingParams(max_tokens=1)
    ms: dict[str, list[float]] = {"named": [], "per_token": [], "per_token_top1": [], "per_token_no_arrow_c": []}
    for rep in range(args.repeats + 1):
        for i, (x, r) in enumerate(zip(ids, rows, strict=True)):
            def tok(k: int, tag: str, x=x, name=f"{rep}-{i}") -> EngineRequest:
                return EngineRequest(tag + name, x, one, mixture=d.adapters,
                                     routing=TokenRouting(k, args.temperature, levels))

            got = {"named": run(engine, [EngineRequest(f"n{rep}-{i}", x, one, r["task"])])[0],
                   "per_token": run(engine, [tok(2, "t")])[0], "per_token_top1": run(engine, [tok(1, "k")])[0]}
            step_plan.StepPlan._lora_fields = no_arrow
            try:
                got["per_token_no_arrow_c"] = run(engine, [tok(2, "a")])[0]
            finally:
                step_plan.StepPlan._lora_fields = fields
            if rep:
                for k, v in got.items():
                    ms[k].append(1000 * v)
    med = {k: round(statistics.median(v), 2) for k, v in ms.items()}
    print(json.dumps({"prompt_tokens": [len(x) for x in ids], "ttft_ms_median": med,
                      "over_named_ms": {k: round(v - med["named"], 2) for k, v in med.items()}}, indent=1))


if __name__ == "__main__":
    main()
