"""Adapter page-in time on a live caching-on server under one eviction policy: bench/prefix.py's shared-prompt
workload at 100 adapters (256 requests, 4 in flight, 1 GiB pool, one thread), every adapter it uses paged in
first; prints the wall time, the hit rate, and the count and sum of loraplex_adapter_load_seconds during it.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.prefix_load_probe cost
"""

import asyncio
import sys
import tempfile
from pathlib import Path

import httpx

from bench import prefix as bp
from bench.peers import process
from bench.peers.assets import adapter_names


def load_seconds(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {name: float(value) for name, _, value in (line.rpartition(" ") for line in text.splitlines())
            if name in ("loraplex_adapter_load_seconds_count", "loraplex_adapter_load_seconds_sum")}


def main() -> None:
    policy = sys.argv[1]
    spec = bp.Spec(names=adapter_names(100), shared_requests=256, ns=(100,))
    log = Path(tempfile.gettempdir()) / f"prefix-load-probe-{policy}.log"
    server = bp.loraplex(process.free_port(), log, True, 1, 1024, policy)
    try:
        reqs = bp.shared_prompt(spec, 100)
        warm = [bp.Req(f"warm/{a}", a, list(range(3000, 3008)), 1) for a in sorted({r.adapter for r in reqs})]
        asyncio.run(bp.run_shared(server.url, warm, 8))
        before = load_seconds(server.url)
        recs, wall = asyncio.run(bp.run_shared(server.url, reqs, spec.concurrency))
        after = load_seconds(server.url)
        hit = sum(r.cached for r in recs) / sum(r.prompt_tokens for r in recs)
        print(policy, f"wall {wall:.1f} s", {k: round(v - before.get(k, 0.0), 3) for k, v in after.items()},
              f"hit {hit:.4f}")
    finally:
        process.stop(server)


if __name__ == "__main__":
    main()
