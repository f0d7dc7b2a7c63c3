"""What restoring one pool page costs, per kind: the inputs of the cost-aware eviction policy (eviction.py).

- KV block: the prefill time one cached 16-token block saves. Engine in-process, the embedded model,
  one request under an adapter: TTFT with a (16 k + 1)-token prompt for two k, caching off; the slope
  per block. Best of `repeats` each.
- Adapter page: the host-to-pool copy of an adapter evicted from the pool while its weights stay in host
  memory (the engine's own load timer), per page, for each rank of the synthetic adapters; best of
  `repeats` each, then the mean over ranks.
Validation first: every timed request produced its one token, and every timed load was a page-in.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.eviction_costs --out bench/results/prefix/eviction/costs.json
"""

import argparse
import json
import time
from pathlib import Path

from bench.peers.assets import adapter_names, adapters_dir
from bench.prefix_eviction import BLOCK, adapter_ranks
from server.config import EngineConfig
from server.engine.llm_engine import EngineRequest, LLMEngine
from server.engine.sampling_params import SamplingParams


def ttft(engine: LLMEngine, prompt: list[int], adapter: str) -> float:
    engine.add_request(EngineRequest(f"t{time.monotonic_ns()}", prompt, SamplingParams(max_tokens=1, temperature=0),
                                     adapter))
    t0, got = time.perf_counter(), 0
    while engine.has_work():
        got += sum(len(d.token_ids) for d in engine.step())
    assert got == 1, got
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--blocks", default="1,16", help="prompt lengths in blocks (+1 token) for the prefill slope")
    args = ap.parse_args()
    engine = LLMEngine.from_config(EngineConfig(dtype="float32", pool_mb=1024, num_threads=args.threads,
                                                prefix_caching=False))
    names = adapter_names(100)
    root = adapters_dir(100)
    ranks = adapter_ranks(names)
    one_per_rank = {r: next(n for n in names if ranks[n] == r) for r in sorted(set(ranks.values()))}
    for n in one_per_rank.values():
        engine.registry.register(n, root / n)
    adapter = one_per_rank[min(one_per_rank)]
    short, long = (int(b) for b in args.blocks.split(","))
    ttft(engine, list(range(1000, 1000 + short * BLOCK + 1)), adapter)  # warm-up, and the adapter paged in
    best = {b: min(ttft(engine, list(range(1000, 1000 + b * BLOCK + 1)), adapter) for _ in range(args.repeats))
            for b in (short, long)}
    kv_block_ms = (best[long] - best[short]) / (long - short) * 1e3

    loads: list[float] = []
    engine.adapters.on_load = loads.append
    per_rank = {}
    for r, name in one_per_rank.items():
        aid = engine.registry.get(name).id
        times = []
        for _ in range(args.repeats + 1):  # the first load reads the disk into host memory: not timed
            assert engine.adapters.pages.drop(aid)
            before = len(loads)
            ttft(engine, list(range(2000, 2008)), name)
            assert len(loads) == before + 1, "the adapter was not paged in"
            times.append(loads[-1])
        pages = len(engine.adapters.pages.placement(aid).pages)
        per_rank[r] = {"pages": pages, "load_ms": min(times[1:]) * 1e3, "ms_per_page": min(times[1:]) * 1e3 / pages}
    adapter_page_ms = sum(v["ms_per_page"] for v in per_rank.values()) / len(per_rank)
    result = {
        "command": f"OMP_NUM_THREADS=1 .venv/bin/python -m bench.eviction_costs --out {args.out} "
                   f"--threads {args.threads} --repeats {args.repeats} --blocks {args.blocks}",
        "note": "2-core host shared with other jobs: best of repeats",
        "prefill_ttft_ms": {f"{b} blocks + 1": t * 1e3 for b, t in best.items()},
        "kv_page_cost_ms": kv_block_ms, "adapter_page_cost_ms": adapter_page_ms, "adapter_per_rank": per_rank,
        "ratio_kv_over_adapter_page": kv_block_ms / adapter_page_ms,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
