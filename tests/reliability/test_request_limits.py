"""Bounded work per request: caps on prompts, n, prompts x n, stop strings and response size, each a
400 naming its flag before any per-prompt work; the queue counts sequences; routing runs after
admission (a refused request costs no routing).

Before: none of these caps existed (a 1 MiB body of [[1],[1],...] froze the event loop for tens of
seconds), --max-queue counted HTTP requests, and a 429 still paid for its routing.
"""

import asyncio
import json

import httpx
import pytest

from tests.server.api.harness import MODEL

pytestmark = pytest.mark.slow


def post(server, body: dict, route: str = "completions") -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{route}", json=body, timeout=120)


def assert_400_naming(r: httpx.Response, flag: str) -> None:
    assert r.status_code == 400, r.text
    assert flag in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("body,flag", [
    ({"prompt": "hi", "n": 5}, "--max-n"),
    ({"prompt": ["a"] * 9}, "--max-prompts"),
    ({"prompt": ["a"] * 5, "n": 4}, "--max-seqs-per-request"),
    ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "--max-stop"),
    ({"prompt": "hi", "stop": "x" * 300}, "--max-stop-chars"),
    ({"prompt": "hi", "max_tokens": 256, "logprobs": 20}, "--max-logprob-entries"),
])
def test_completion_limits(rserver, body, flag):
    assert_400_naming(post(rserver, {"model": MODEL, **body}), flag)


def test_chat_default_max_tokens_counts_toward_the_response_size(rserver):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 20}
    assert_400_naming(post(rserver, body, "chat/completions"), "--max-logprob-entries")
    ok = post(rserver, {**body, "max_tokens": 2}, "chat/completions")
    assert ok.status_code == 200, ok.text


def test_a_megabyte_of_tiny_prompts_is_refused_before_any_per_prompt_work(rserver):
    body = '{{"model": "{}", "prompt": [{}]}}'.format(MODEL, ",".join(["[1]"] * 200_000))
    assert len(body) > 1_000_000 - 200_000
    r = httpx.post(f"{rserver.url}/v1/completions", content=body, timeout=120,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_prompts", r.text[:300]


async def _first_chunk(client: httpx.AsyncClient, body: dict) -> tuple[httpx.Response, object]:
    """The stream, open, after its first event. The line iterator is kept on the response: once collected,
    an async generator is closed, and closing it closes the stream (the server then aborts the request)."""
    ctx = client.stream("POST", "/v1/completions", json={**body, "stream": True})
    r = await ctx.__aenter__()
    r.lines = r.aiter_lines()
    async for line in r.lines:
        if line.startswith("data: "):
            break
    return r, ctx


def test_queue_counts_sequences_and_routing_runs_after_admission(rserver):
    """--max-num-seqs 2 --max-queue 4: A (n=2) fills the batch; B (n=4) waits; C (n=1) is the 5th waiting
    sequence -> 429, and a routed request refused so never reaches its router."""

    async def run():
        async with httpx.AsyncClient(base_url=rserver.url, timeout=120) as client:
            a, a_ctx = await _first_chunk(client, {"model": MODEL, "prompt": "Count:", "n": 2, "max_tokens": 256,
                                                   "ignore_eos": True})
            b_ctx = client.stream("POST", "/v1/completions", json={
                "model": MODEL, "prompt": "hello", "n": 4, "max_tokens": 2, "stream": True})
            b = await b_ctx.__aenter__()
            assert b.status_code == 200
            choices_before = rserver.sample("loraplex_router_choices_total", router="ops", adapter="")
            c = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
            routed = await client.post("/v1/completions", json={"model": "ops", "prompt": "y", "max_tokens": 1})
            for ctx in (b_ctx, a_ctx):
                await ctx.__aexit__(None, None, None)
            return c, routed, choices_before

    # before: --max-queue counted requests, so with one (B) waiting, C was admitted
    c, routed, choices_before = asyncio.run(run())
    assert c.status_code == 429 and c.headers["retry-after"], c.text
    assert routed.status_code == 429
    assert rserver.sample("loraplex_router_choices_total", router="ops", adapter="") == choices_before
    assert json.loads(c.text)["error"]["code"] == "queue_full"
