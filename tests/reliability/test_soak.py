"""Soak: mixed requests over many adapters with load/unload churn every second and 20% client
disconnects. No 5xx, RSS growth under 5% after a warm-up under the same load, and once every adapter
is unloaded the pool's free pages are back at their start value (unloaded adapters' pages, offsets and
refs are dropped).

Full size (2,000 requests, 50 adapters, at most 5 minutes) with LORAPLEX_SOAK=1; CI runs 160 requests
over 10 adapters.
"""

import asyncio
import os
import random
import time

import httpx
import psutil
import pytest

from bench.adapter_tools.synthetic import generate
from tests.reliability.load import run_load
from tests.server.api.harness import MODEL, start_server, stop_server, wait_until

pytestmark = pytest.mark.slow
FULL = os.environ.get("LORAPLEX_SOAK") == "1"
REQUESTS, ADAPTERS, BOUND_S = (2000, 50, 300.0) if FULL else (160, 10, 120.0)
ADMIN = {"authorization": "Bearer soak-admin"}


def test_soak(tmp_path, checkpoint):
    root = tmp_path / "adapters"
    generate(root, checkpoint.config, ADAPTERS, seed=5, ranks=(4, 8, 16), targets="mixed")
    names = sorted(p.name for p in root.iterdir())
    server = start_server(tmp_path, "--adapter-dir", str(root), "--allowed-adapter-root", str(root),
                          "--enable-adapter-admin", "--admin-key", "soak-admin", "--max-num-seqs", "16")
    proc = psutil.Process(server.proc.pid)
    try:
        free0 = server.sample("loraplex_pool_pages", use="free")
        models = [MODEL, *names]
        churn = random.Random(2)
        unloaded: list[str] = []
        last = [time.monotonic()]

        async def tick(_: int) -> None:  # once a second: unload one adapter, or load one back
            if time.monotonic() - last[0] < 1.0:
                return
            last[0] = time.monotonic()
            async with httpx.AsyncClient(base_url=server.url, headers=ADMIN, timeout=60) as admin:
                if unloaded and (churn.random() < 0.5 or len(unloaded) > ADAPTERS // 2):
                    name = unloaded.pop(churn.randrange(len(unloaded)))
                    body = {"lora_name": name, "lora_path": str(root / name)}
                    r = await admin.post("/v1/load_lora_adapter", json=body)
                else:
                    name = churn.choice([n for n in names if n not in unloaded])
                    unloaded.append(name)
                    r = await admin.post("/v1/unload_lora_adapter", json={"lora_name": name})
                assert r.status_code == 200, r.text

        # the same load (churn included) first, so caches and the allocator's arenas reach their steady size
        t0 = time.monotonic()
        warm = asyncio.run(run_load(server.url, models, n=REQUESTS // 4, concurrency=16, disconnect=0.2, seed=1,
                                    on_tick=tick, max_tokens=6))
        rss0 = proc.memory_info().rss
        outcomes = asyncio.run(run_load(server.url, models, n=REQUESTS, concurrency=16, disconnect=0.2, seed=3,
                                        on_tick=tick, max_tokens=6))
        elapsed = time.monotonic() - t0
        for o in warm + outcomes:
            assert o.status in (0, 200, 404), o  # 404: its adapter was unloaded by the churn
            assert not o.error or o.error["code"] == "model_not_found", o
        assert elapsed < BOUND_S, f"{REQUESTS} requests took {elapsed:.0f}s"
        wait_until(lambda: server.sample("loraplex_requests_running") == 0
                   and server.sample("loraplex_pool_pages", use="kv") == 0, 60, "idle")
        rss1 = proc.memory_info().rss
        assert rss1 < rss0 * 1.05, f"RSS grew {rss1 / rss0 - 1:.1%} ({rss0 >> 20} -> {rss1 >> 20} MiB)"
        for name in names:
            if name not in unloaded:
                r = httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": name}, headers=ADMIN)
                assert r.status_code == 200, r.text
        # every page free again, or kept as an idle cached KV block (evictable, held by nobody)
        wait_until(lambda: server.sample("loraplex_pool_pages", use="free")
                   + server.sample("loraplex_pool_pages", use="cached") == free0, 30, "free pages back at start")
        assert server.sample("loraplex_adapters_resident") == 0
        print(f"soak: {REQUESTS} requests, {ADAPTERS} adapters, {elapsed:.0f}s, RSS {rss0 >> 20} -> {rss1 >> 20} MiB")
    finally:
        stop_server(server)
