"""Routers as model names: the choice is served, reported in a header and the body, and counted."""

import httpx

from tests.server.api.harness import MODEL

SENTIMENT = "Review: The soup was cold and the waiter was rude. Never again.\nSentiment:"


def post(server, route: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{route}", json=body, timeout=60)


def test_auto_routes_to_the_task_adapter_and_says_so(routed_server):
    body = {"prompt": SENTIMENT, "max_tokens": 3, "temperature": 0}
    routed = post(routed_server, "completions", {**body, "model": "auto"})
    named = post(routed_server, "completions", {**body, "model": "sentiment"})
    assert routed.status_code == 200, routed.text
    assert routed.headers["x-loraplex-adapter"] == "sentiment"
    info = routed.json()["loraplex"]
    assert info["adapter"] == "sentiment" and info["router"] == "auto" and not info["fell_back"]
    assert max(info["scores"], key=info["scores"].get) == "sentiment"
    assert routed.json()["choices"][0]["text"] == named.json()["choices"][0]["text"]


def test_below_threshold_falls_back_to_the_base(routed_server):
    body = {"prompt": "Hello, how are you today?", "max_tokens": 4, "temperature": 0}
    routed = post(routed_server, "completions", {**body, "model": "auto"})
    base = post(routed_server, "completions", {**body, "model": MODEL})
    assert routed.headers["x-loraplex-adapter"] == MODEL and routed.json()["loraplex"]["fell_back"]
    assert routed.json()["choices"][0]["text"] == base.json()["choices"][0]["text"]


def test_chat_and_streaming_and_rules(routed_server):
    chat = post(routed_server, "chat/completions", {
        "model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": SENTIMENT}],
    })
    assert chat.status_code == 200 and chat.json()["loraplex"]["adapter"] == "sentiment"
    with httpx.stream("POST", f"{routed_server.url}/v1/completions", timeout=60, json={
        "model": "ops", "prompt": "Reverse: one two\nAnswer:", "max_tokens": 3, "stream": True,
    }) as r:
        assert r.status_code == 200 and r.headers["x-loraplex-adapter"] == "reverse"
        assert "[DONE]" in r.read().decode()
    choices = routed_server.sample("loraplex_router_choices_total", router="auto", adapter="sentiment")
    assert choices >= 2


def test_models_lists_routers(routed_server):
    cards = {m.id: m.model_dump() for m in routed_server.client().models.list().data}
    assert cards["auto"]["loraplex_kind"] == "router" and cards["ops"]["loraplex_kind"] == "router"
