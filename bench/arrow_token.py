"""Per-token Arrow (`mode=token`) against naming the adapter, in one run: throughput and time to first token.

Throughput: one batch of B requests (demo prompts, greedy, fixed output length), where 0% (baseline),
25% or 100% of them route every token among all demo adapters (top_k of C candidates), the rest name
their task's adapter; decode tokens per second and the ratio to the baseline. The same requests, the
same engine, configurations interleaved over repeats (medians).
TTFT: one request alone, its first token: named adapter (baseline) vs per-token routing (no routing
pass: every adapter is a candidate) vs request-level Arrow (a routing pass, then the adapter).
Before timing: a per-token request whose only candidate is an adapter equals that adapter named
(softmax over one candidate is weight 1), token for token.

    .venv/bin/python -m bench.arrow_token --out bench/results/router/arrow_token.json
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.report_file import emit
from server.api.routing import Routers
from server.config import EngineConfig
from server.engine.async_engine import AsyncEngine
from server.engine.llm_engine import EngineRequest, LLMEngine
from server.engine.sampling_params import SamplingParams
from server.engine.sequence import TokenRouting

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "server" / "adapters" / "demo"


def run(engine, reqs: list[EngineRequest]) -> tuple[float, float, dict[str, list[int]]]:
    """(seconds to the first token of the first request, total seconds, outputs)."""
    out: dict[str, list[int]] = {}
    t0 = time.perf_counter()
    first = None
    for r in reqs:
        engine.add_request(r)
    while engine.has_work():
        for d in engine.step():
            out.setdefault(d.request_id, []).extend(d.token_ids)
            if first is None and d.token_ids:
                first = time.perf_counter() - t0
    return first, time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=0.25, help="with --mixed base, as chosen on the demo set "
                    "(bench/arrow_token_accuracy.py)")
    ap.add_argument("--mixed", default="base", choices=["base", "peft"], help="the router's rule where only some "
                    "candidates target a projection (router/arrow_token.py)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", help="fp32: the validation below is exact (bf16 rounds the "
                    "routed rows' deltas once more, in their own buffer)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    # no prefix caching: the TTFT rounds repeat their prompts, and a cached prefix would time only the last block
    engine = LLMEngine.from_config(EngineConfig(max_model_len=512, max_num_seqs=64, dtype=args.dtype,
                                                prefix_caching=False))
    engine.registry.register_dir(DEMO / "adapters")
    names = sorted(ref.name for ref in engine.registry)
    rows = [json.loads(line) for line in (DEMO / "eval.jsonl").read_text().splitlines()]
    rows = [rows[i * len(rows) // args.batch] for i in range(args.batch)]  # every task, spread
    ids = [engine.tokenizer(r["prompt"])["input_ids"] for r in rows]
    greedy = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    specs = {"arrow": "arrow:fallback=off", "token": f"arrow:mode=token,mixed={args.mixed}"}
    routers = Routers(AsyncEngine(engine), specs)
    d = routers.route("token", "x")  # every demo adapter is a candidate: no pass; mixed=base: levels in routing[2]
    cands = d.adapters
    levels = dict(zip(names, [None] * len(names), strict=True)) if len(d.routing) < 3 else dict(
        zip([a for a, _ in cands], d.routing[2], strict=True))
    routing = TokenRouting(args.top_k, args.temperature, d.routing[2] if len(d.routing) > 2 else None)

    # validate: one candidate, per token == named
    one_lv = None if levels[rows[0]["task"]] is None else (levels[rows[0]["task"]],)
    _, _, a = run(engine, [EngineRequest("v-named", ids[0], greedy, rows[0]["task"])])
    _, _, b = run(engine, [EngineRequest("v-tok", ids[0], greedy, mixture=((rows[0]["task"], 1.0),),
                                         routing=TokenRouting(args.top_k, args.temperature, one_lv))])
    assert a["v-named"] == b["v-tok"], "a per-token request over one candidate differs from the adapter named"

    def batch(frac: float, tag: str) -> list[EngineRequest]:
        """frac of the rows (every 4th for 25%) route per token; the others name their task's adapter."""
        routed = [frac == 1.0 or (frac == 0.25 and i % 4 == 0) for i in range(args.batch)]
        pairs = enumerate(zip(ids, rows, strict=True))
        return [EngineRequest(f"{tag}-{i}", x, greedy, mixture=cands, routing=routing) if routed[i]
                else EngineRequest(f"{tag}-{i}", x, greedy, r["task"]) for i, (x, r) in pairs]

    fracs = [0.0, 0.25, 1.0]
    tput: dict[float, list[float]] = {f: [] for f in fracs}
    ttft: dict[str, list[float]] = {"named": [], "per_token": [], "request_arrow": []}
    for rep in range(args.repeats + 1):  # the first round warms up and is dropped
        for f in fracs:
            _, secs, out = run(engine, batch(f, f"b{rep}-{f}"))
            assert all(len(v) == args.max_tokens for v in out.values())
            if rep:
                tput[f].append(args.batch * args.max_tokens / secs)
        for i in range(4):
            x, task, text = ids[i], rows[i]["task"], rows[i]["prompt"]
            t, _, _ = run(engine, [EngineRequest(f"t{rep}-{i}-n", x, SamplingParams(max_tokens=1), task)])
            u, _, _ = run(engine, [EngineRequest(f"t{rep}-{i}-t", x, SamplingParams(max_tokens=1), mixture=cands,
                                                 routing=routing)])
            t0 = time.perf_counter()
            d = routers.route("arrow", text)  # its routing pass, then the request
            one = SamplingParams(max_tokens=1)
            run(engine, [EngineRequest(f"t{rep}-{i}-r", x, one, mixture=d.adapters) if len(d.adapters) > 1
                         else EngineRequest(f"t{rep}-{i}-r", x, one, d.adapter)])
            w_total = time.perf_counter() - t0
            if rep:
                ttft["named"].append(t)
                ttft["per_token"].append(u)
                ttft["request_arrow"].append(w_total)
    med = {f: statistics.median(v) for f, v in tput.items()}
    ttft_ms = {k: round(1000 * statistics.median(v), 2) for k, v in ttft.items()}
    rep = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python -m bench.arrow_token "
                   "--out bench/results/router/arrow_token.json",
        "note": "CPU, measured under load: five other helpers share this 2-core machine, "
                "so one thread (OpenMP waits on a busy core otherwise); "
                "ratios within one run are what to read, not absolute numbers",
        "adapters": names, "candidates": len(names), "top_k": args.top_k, "temperature": args.temperature,
        "mixed": args.mixed,
        "batch": args.batch, "max_tokens": args.max_tokens, "repeats": args.repeats,
        "dtype": engine.config.dtype,
        "throughput_tok_s": {f"{int(f * 100)}%_per_token": round(v, 1) for f, v in med.items()},
        "throughput_ratio_to_named": {f"{int(f * 100)}%_per_token": round(v / med[0.0], 3) for f, v in med.items()},
        "ttft_ms_median": ttft_ms,
        "ttft_overhead_vs_named": {k: round(v / ttft_ms["named"] - 1, 3) for k, v in ttft_ms.items()},
    }
    emit(rep, args.out)


if __name__ == "__main__":
    main()
