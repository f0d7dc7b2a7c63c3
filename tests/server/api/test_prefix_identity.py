"""Prefix caching keyed by adapter content, through the live HTTP server.

One long prompt goes to the base model, to adapter X, to a mixture, then to X after X is unloaded and
reloaded from other weights under the same name. Every output equals a fresh server's (caching off)
output for that identity; usage.prompt_tokens_details.cached_tokens shows hits where the identity
repeats (also across two names for the same weights) and none across identities.
"""

import shutil

import httpx
import pytest

from router.arrow import ArrowOptions
from tests.server.api.harness import DEMO_ADAPTERS, MODEL, start_server, stop_server

PROMPT = (
    "The following note was written by a clerk in the city archive. It lists, in no particular order, "
    "the people who came to the front desk on Monday, what they asked for and where they live, so that "
    "the replies can be posted. The clerk writes plainly and does not abbreviate. "
    "Extract name, age and city as JSON: Ann Lee is 30 years old and lives in Oslo.\nJSON:"
)
# a top-2 Arrow router that never falls back to the base: every request a mixture
NEVER_BASE = "fallback=off" if "fallback" in ArrowOptions.__dataclass_fields__ else "threshold=0"
ROUTER = ("--router", f"blend=arrow:top_k=2,{NEVER_BASE}")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix-root")
    shutil.copytree(DEMO_ADAPTERS / "reverse", root / "x-first")
    shutil.copytree(DEMO_ADAPTERS / "sentiment", root / "x-second")  # other weights, same name later
    return root


def _flags(root, *extra):
    return ("--adapter-dir", str(DEMO_ADAPTERS), "--adapter", f"x={root / 'x-first'}", *ROUTER,
            "--allowed-adapter-root", str(root), "--enable-adapter-admin", *extra)


@pytest.fixture(scope="module")
def cached_server(tmp_path_factory, roots):
    s = start_server(tmp_path_factory.mktemp("prefix-on"), *_flags(roots))
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def fresh_outputs(tmp_path_factory, roots):
    """What a fresh server with caching off answers for each identity (the same adapters and router)."""
    s = start_server(tmp_path_factory.mktemp("prefix-off"), *_flags(roots, "--no-prefix-caching"))
    try:
        out = {}
        for model in (MODEL, "x", "reverse", "blend", "sentiment"):
            body = complete(s, model)
            assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # off: never a hit
            out[model] = body["choices"][0]["text"]
        return out
    finally:
        stop_server(s)


def complete(server, model: str) -> dict:
    r = httpx.post(f"{server.url}/v1/completions", timeout=120,
                   json={"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def cached(body: dict) -> int:
    return body["usage"]["prompt_tokens_details"]["cached_tokens"]


def admin(server, route: str, body: dict) -> None:
    r = httpx.post(f"{server.url}/v1/{route}", json=body, timeout=120)
    assert r.status_code == 200, r.text


def test_outputs_equal_a_fresh_server_per_identity_and_hits_stay_within_one(cached_server, fresh_outputs, roots):
    s = cached_server
    base = complete(s, MODEL)
    n = base["usage"]["prompt_tokens"]
    assert n > 64 and cached(base) == 0
    again = complete(s, MODEL)
    assert cached(again) >= (n - 1) // 16 * 16 - 16 and again["choices"][0]["text"] == base["choices"][0]["text"]
    assert base["choices"][0]["text"] == fresh_outputs[MODEL]
    assert base["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0

    x = complete(s, "x")
    assert cached(x) == 0, "the base model's KV must not serve an adapter"
    assert x["choices"][0]["text"] == fresh_outputs["x"]
    same_weights = complete(s, "reverse")  # another name for x's weights: one identity, so a hit
    assert cached(same_weights) > 0 and same_weights["choices"][0]["text"] == fresh_outputs["reverse"]

    mix = complete(s, "blend")
    assert len(mix["loraplex"]["mixture"]) == 2
    assert cached(mix) == 0, "neither the base's nor one adapter's KV may serve a mixture"
    assert mix["choices"][0]["text"] == fresh_outputs["blend"]
    assert cached(complete(s, "blend")) > 0

    admin(s, "unload_lora_adapter", {"lora_name": "x"})
    admin(s, "load_lora_adapter", {"lora_name": "x", "lora_path": str(roots / "x-second")})
    reloaded = complete(s, "x")
    assert cached(reloaded) == 0, "x's old KV must not serve x's new weights"
    assert reloaded["choices"][0]["text"] == fresh_outputs["sentiment"]  # the same weights as the new x
    assert reloaded["choices"][0]["text"] != x["choices"][0]["text"]
    assert cached(complete(s, "sentiment")) > 0  # the new x's blocks serve its twin

    metrics = s.metrics()
    hits = sum(v for (name, _), v in metrics.items() if name == "loraplex_prefix_cache_hit_tokens_total")
    queried = sum(v for (name, _), v in metrics.items() if name == "loraplex_prefix_cache_queried_tokens_total")
    assert 0 < hits < queried
    assert s.sample("loraplex_pool_pages", use="cached") > 0


def test_streamed_chat_usage_reports_cached_tokens(cached_server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    client = cached_server.client()
    usages = []
    for _ in range(2):
        chunks = list(client.chat.completions.create(**body))
        usages.append(chunks[-1].usage)
    assert usages[0].prompt_tokens == usages[1].prompt_tokens > 32
    assert usages[1].prompt_tokens_details.cached_tokens >= usages[1].prompt_tokens - 32
    assert usages[1].completion_tokens_details.reasoning_tokens == 0
