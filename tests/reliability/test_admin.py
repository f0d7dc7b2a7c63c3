"""Adapter admin: off unless --enable-adapter-admin, its own key, loads only from allowed roots,
unload on the engine thread (a request queued for the adapter fails alone, or finishes).

Before: /v1/unload_lora_adapter worked with no gate at all, and unloading an adapter while a request
for it was queued killed the engine thread (every later request 500, /health still 200).
"""

import asyncio

import httpx
import pytest

from tests.reliability.conftest import ADMIN_KEY, API_KEY
from tests.server.api.harness import DEMO_ADAPTERS, MODEL

pytestmark = pytest.mark.slow
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def admin(server, route: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{route}", json=body, headers=headers or {}, timeout=120)


def test_admin_is_off_unless_enabled(keyed_server):
    auth = {"authorization": f"Bearer {API_KEY}"}
    r = admin(keyed_server, "unload_lora_adapter", {"lora_name": "sentiment"}, auth)
    assert r.status_code == 403 and r.json()["error"]["code"] == "adapter_admin_disabled", r.text
    r = admin(keyed_server, "load_lora_adapter", {"lora_name": "x", "lora_path": str(DEMO_ADAPTERS / "reverse")}, auth)
    assert r.status_code == 403
    served = httpx.post(f"{keyed_server.url}/v1/completions", headers=auth, timeout=60,
                        json={"model": "sentiment", "prompt": "Review: great\nSentiment:", "max_tokens": 1})
    assert served.status_code == 200


def test_admin_key_is_its_own(rserver, reliability_root):
    body = {"lora_name": "copy", "lora_path": str(reliability_root / "sentiment-copy")}
    assert admin(rserver, "load_lora_adapter", body).status_code == 401
    assert admin(rserver, "load_lora_adapter", body, {"authorization": "Bearer wrong"}).status_code == 401
    outside = admin(rserver, "load_lora_adapter", {"lora_name": "out", "lora_path": str(DEMO_ADAPTERS / "reverse")},
                    ADMIN)
    assert outside.status_code == 403 and outside.json()["error"]["code"] == "adapter_path_not_allowed"
    assert admin(rserver, "load_lora_adapter", body, ADMIN).status_code == 200, body
    try:
        # the completions API itself needs no key on this server: only admin does
        r = httpx.post(f"{rserver.url}/v1/completions", timeout=60,
                       json={"model": "copy", "prompt": "Review: bad\nSentiment:", "max_tokens": 1})
        assert r.status_code == 200
    finally:
        assert admin(rserver, "unload_lora_adapter", {"lora_name": "copy"}, ADMIN).status_code == 200
    gone = httpx.post(f"{rserver.url}/v1/completions", json={"model": "copy", "prompt": "x", "max_tokens": 1},
                      timeout=60)
    assert gone.status_code == 404
    assert admin(rserver, "unload_lora_adapter", {"lora_name": "copy"}, ADMIN).status_code == 404


def test_unload_while_requests_for_it_are_queued(rserver, reliability_root):
    """Requests for an adapter race its unload: each ends 200 (it was running) or 404 (it was not yet
    added), never 500; the engine keeps serving and /health stays 200."""
    body = {"lora_name": "racy", "lora_path": str(reliability_root / "sentiment-copy")}

    async def run():
        async with httpx.AsyncClient(base_url=rserver.url, timeout=120) as client:
            statuses = []
            for _ in range(4):
                assert (await client.post("/v1/load_lora_adapter", json=body, headers=ADMIN)).status_code == 200
                busy = client.post("/v1/completions", json={"model": MODEL, "prompt": "Long " * 300, "max_tokens": 1})
                reqs = [client.post("/v1/completions", json={"model": "racy", "prompt": "Review: ok\nSentiment:",
                                                             "max_tokens": 3}) for _ in range(3)]
                unload = client.post("/v1/unload_lora_adapter", json={"lora_name": "racy"}, headers=ADMIN)
                results = await asyncio.gather(busy, *reqs, unload)
                assert results[-1].status_code == 200
                statuses += [r.status_code for r in results[1:-1]]
            return statuses

    statuses = asyncio.run(run())
    assert set(statuses) <= {200, 404}, statuses
    assert httpx.get(f"{rserver.url}/health").status_code == 200
    after = httpx.post(f"{rserver.url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
                       timeout=60)
    assert after.status_code == 200
