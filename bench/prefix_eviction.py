"""Eviction policies on bench/prefix.py's shared-prompt trace, replayed through the real scheduler and pool
bookkeeping without a model: hit rate against the trace's ideal, evictions by kind, adapter loads.

The trace is bench/prefix.py's (same generator, seed and Zipf draw); the pool has SmolLM2-135M's fp32
geometry (a page = one 16-token KV block of 30 layers x 3 KV heads x 64 = 0.70 MiB) and each adapter
holds the pages its rank and targets pack into (bench/peers' synthetic q_proj + v_proj adapters:
ranks 8/16/32/64 = 3/6/11/21 pages). Closed loop as the live bench: `concurrency` requests in
flight, the next sent when one ends; a step computes what the scheduler hands out (no timing).
Exact and deterministic, so LRU and cost-aware eviction compare on the same sequence of events;
bench/prefix.py measures TTFT on the live server.

    .venv/bin/python -m bench.prefix_eviction --out bench/results/prefix/eviction/sim.json
"""

import argparse
import json
from collections import deque
from pathlib import Path

from bench.prefix import BLOCK, Spec, chain, shared_prompt
from server.engine.sampling_params import SamplingParams
from server.engine.scheduler import Scheduler, SchedulerConfig
from server.engine.sequence import Sequence
from server.memory.adapter_pages import AdapterPages, pack
from server.memory.block_manager import BlockManager
from server.memory.eviction import POLICIES, Eviction, EvictionConfig
from server.memory.page_pool import PagePool
from server.memory.prefix_cache import PrefixCache

LAYERS, KV_HEADS, HEAD_DIM, HIDDEN = 30, 3, 64, 576  # SmolLM2-135M
PAGE_ELEMS = LAYERS * 2 * BLOCK * KV_HEADS * HEAD_DIM
PAGE_MIB = PAGE_ELEMS * 4 / 2**20  # fp32
SHAPES = {"q_proj": (HIDDEN, HIDDEN), "v_proj": (HIDDEN, KV_HEADS * HEAD_DIM)}  # (in, out)
RANKS = (8, 16, 32, 64)


def adapter_sizes(rank: int) -> dict[tuple[int, str, str], int]:
    """What the lora format pages in per (layer, module): A, B and the Arrow prototype (elements)."""
    return {(layer, m, f): n for layer in range(LAYERS) for m, (i, o) in SHAPES.items()
            for f, n in {"a": rank * i, "b": o * rank, "proto": i}.items()}


def adapter_ranks(names: list[str]) -> dict[str, int]:
    from bench.peers.assets import adapters_dir

    root = adapters_dir(len(names))
    return {n: json.loads((root / n / "adapter_config.json").read_text())["r"] for n in names}


class Adapters:
    """The scheduler's AdapterAdmission over the real page bookkeeping, with each adapter's real page count."""

    def __init__(self, pool: PagePool, ranks: list[int]):
        self.pages = AdapterPages(pool, PAGE_ELEMS)
        self.sizes = {r: adapter_sizes(r) for r in set(ranks)}
        self.ranks = ranks
        self.pages_loaded = 0

    def acquire(self, adapter_id: int) -> bool:
        got = self.pages.acquire(adapter_id, self.sizes[self.ranks[adapter_id]])
        if got is not None and got[1]:
            self.pages_loaded += len(got[0].pages)
        return got is not None

    def release(self, adapter_id: int) -> None:
        self.pages.release(adapter_id)


def ideal_in_order(trace: list[tuple[int, list[int]]]) -> list[int]:
    """Per request, the tokens an infinite cache would serve (every earlier request of its adapter cached)."""
    seen: dict[int, set[int]] = {}
    out = []
    for a, prompt in trace:
        mine, have = chain(prompt), seen.setdefault(a, set())
        out.append(next((j for j, h in enumerate(mine) if h not in have), len(mine)) * BLOCK)
        have.update(chain(prompt, own=False))
    return out


def replay(trace: list[tuple[int, list[int]]], ranks: list[int], pool_mb: int, eviction: EvictionConfig,
           concurrency: int, output_len: int, max_num_seqs: int = 64, max_batch_tokens: int = 2048) -> dict:
    pool = PagePool(max(1, int(pool_mb / PAGE_MIB)), Eviction(eviction))
    cache = PrefixCache(pool, BLOCK)
    adapters = Adapters(pool, ranks)
    sched = Scheduler(SchedulerConfig(max_num_seqs, max_batch_tokens), BlockManager(pool, BLOCK, cache), adapters)
    queue = deque(enumerate(trace))
    seqs: list[Sequence] = []
    in_flight, steps, prefill_tokens = 0, 0, 0
    while queue or sched.has_work():
        while queue and in_flight < concurrency:
            i, (a, prompt) = queue.popleft()
            s = Sequence(i, f"r{i}", 0, list(prompt), SamplingParams(max_tokens=output_len), float(i),
                         lora=((a, 1.0),), lora_identity=((f"adapter-{a}", 1.0),))
            seqs.append(s)
            sched.add(s)
            in_flight += 1
        out = sched.schedule()
        sched.advance(out)
        prefill_tokens += sum(c.num_tokens for c in out.prefills)
        for c in out.chunks:
            if c.samples:
                c.seq.output_ids.append(1)
                if len(c.seq.output_ids) == output_len:
                    sched.finish(c.seq, "length")
                    in_flight -= 1
        steps += 1
        assert steps < 100 * len(trace) * (output_len + 1), "no progress"
    prompt_tokens = sum(len(p) for _, p in trace)
    hit = sum(s.num_cached_tokens or 0 for s in sorted(seqs, key=lambda s: s.seq_id))
    best = ideal_in_order(trace)
    return {
        "policy": eviction.policy, "pool_mb": pool_mb, "pages": pool.num_pages,
        "hit_rate": hit / prompt_tokens, "ideal_in_order": sum(best) / prompt_tokens,
        "requests_short_of_ideal": sum((s.num_cached_tokens or 0) < b for s, b in
                                       zip(sorted(seqs, key=lambda s: s.seq_id), best, strict=True)),
        "kv_blocks_evicted": cache.stats.evictions, "adapter_evictions": adapters.pages.stats.evictions,
        "adapter_loads": adapters.pages.stats.loads, "adapter_pages_loaded": adapters.pages_loaded,
        "prefill_tokens": prefill_tokens, "preemptions": sched.num_preemptions, "steps": steps,
    }


def restore_cost_ms(r: dict, config: EvictionConfig) -> float:
    """What this run spent recomputing and paging in, in the cost policy's own units (ms)."""
    kv = r["prefill_tokens"] / BLOCK * config.kv_page_cost_ms
    return kv + r["adapter_pages_loaded"] * config.adapter_page_cost_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=100, help="adapters the trace draws from (Zipf)")
    ap.add_argument("--shared-requests", type=int, default=256)
    ap.add_argument("--pool-mb", default="512,768,1024,1536,2048,3072")
    ap.add_argument("--tight-mb", type=int, default=1024, help="pool for the cost-ratio sensitivity runs")
    args = ap.parse_args()
    from bench.peers.assets import adapter_names

    spec = Spec(names=adapter_names(100), shared_requests=args.shared_requests)
    names = spec.names
    by_name = adapter_ranks(names)
    ranks = [by_name[n] for n in names]
    reqs = shared_prompt(spec, args.n)
    trace = [(names.index(r.adapter), r.prompt) for r in reqs]
    used = sorted({a for a, _ in trace})
    working_set = {
        "distinct_adapters": len(used),
        "adapter_pages": sum(pack(adapter_sizes(ranks[a]), PAGE_ELEMS)[0] for a in used),
        "shared_prefix_pages": len(used) * (spec.system_len // BLOCK),
        "page_mib": PAGE_MIB,
        # requests coming after an earlier one of their adapter: the only ones any cache can serve
        "requests_that_can_hit": sum(b > 0 for b in ideal_in_order(trace)),
        "requests": len(trace),
    }
    working_set["mib"] = (working_set["adapter_pages"] + working_set["shared_prefix_pages"]) * PAGE_MIB
    costs = EvictionConfig()
    runs = [replay(trace, ranks, int(mb), EvictionConfig(policy), spec.concurrency, spec.output_len)
            for mb in args.pool_mb.split(",") for policy in POLICIES]
    for r in runs:
        r["restore_cost_ms"] = restore_cost_ms(r, costs)
    # how much the outcome hangs on the measured cost ratio (kv page / adapter page), at the tight pool
    sensitivity = []
    for ratio in (1, 2, 5, 10, 20, 50, 100):
        r = replay(trace, ranks, args.tight_mb, EvictionConfig("cost", kv_page_cost_ms=float(ratio),
                                                                   adapter_page_cost_ms=1.0),
                   spec.concurrency, spec.output_len)
        keep = ("hit_rate", "kv_blocks_evicted", "adapter_loads", "prefill_tokens")
        sensitivity.append({"kv_over_adapter_page_cost": ratio, **{k: r[k] for k in keep},
                            "restore_cost_ms": restore_cost_ms(r, costs)})
    result = {"command": f".venv/bin/python -m bench.prefix_eviction --out {args.out} --n {args.n} "
                         f"--shared-requests {args.shared_requests} --pool-mb {args.pool_mb} "
                         f"--tight-mb {args.tight_mb}",
              "trace": f"bench/prefix.py shared_prompt: {args.shared_requests} requests, n={args.n}, "
                       f"system {spec.system_len} tokens, seed {spec.seed}, concurrency {spec.concurrency}",
              "costs_ms": {"kv_page": costs.kv_page_cost_ms, "adapter_page": costs.adapter_page_cost_ms},
              "working_set": working_set, "runs": runs, "cost_ratio_sensitivity": sensitivity}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(working_set))
    cols = ("policy", "pool_mb", "pages", "hit_rate", "ideal_in_order", "requests_short_of_ideal", "kv_blocks_evicted",
            "adapter_evictions", "adapter_loads", "prefill_tokens", "restore_cost_ms")
    print(" | ".join(cols))
    for r in runs:
        print(" | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    for r in sensitivity:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
