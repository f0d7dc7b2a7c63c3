"""Routers as model names: the choice is served, reported in a header and the body, and counted."""

import httpx

from tests.server.api.harness import DEMO_ADAPTERS, MODEL

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


def test_arrow_routes_from_the_adapters_weights(routed_server):
    body = {"prompt": "Reverse the words: red green blue\nReversed:", "max_tokens": 6, "temperature": 0}
    routed = post(routed_server, "completions", {**body, "model": "arrow"})
    named = post(routed_server, "completions", {**body, "model": "reverse"})
    assert routed.status_code == 200, routed.text
    info = routed.json()["loraplex"]
    assert routed.headers["x-loraplex-adapter"] == "reverse" and info["router"] == "arrow"
    assert info["scores"]["reverse"] == max(info["scores"].values()) and "mixture" not in info
    assert routed.json()["choices"][0]["text"] == named.json()["choices"][0]["text"]
    off = post(routed_server, "completions", {"prompt": "Who wrote Hamlet?", "max_tokens": 2, "model": "arrow"})
    assert off.json()["loraplex"]["fell_back"] and off.headers["x-loraplex-adapter"] == MODEL


def test_top2_router_serves_a_mixture(routed_server):
    prompt = "Extract name, age and city as JSON: Ann Lee is 30 years old and lives in Oslo.\nJSON:"
    body = {"model": "blend", "prompt": prompt, "max_tokens": 5, "temperature": 0}
    first = post(routed_server, "completions", body)
    assert first.status_code == 200, first.text
    info = first.json()["loraplex"]
    names = [m["adapter"] for m in info["mixture"]]
    assert len(names) == 2 and first.headers["x-loraplex-adapter"] == ",".join(names)
    assert abs(sum(m["weight"] for m in info["mixture"]) - 1) < 1e-3
    again = post(routed_server, "completions", {**body, "stream": False})
    assert again.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]  # greedy: same mixture, same text
    for name in names:
        assert routed_server.sample("loraplex_router_choices_total", router="blend", adapter=name) >= 2


def test_arrow_follows_adapters_loaded_and_unloaded_at_run_time(routed_server):
    prompt = {"prompt": "Review: what a dreadful, boring film.\nSentiment:", "max_tokens": 1, "model": "arrow"}
    assert post(routed_server, "completions", prompt).headers["x-loraplex-adapter"] == "sentiment"
    assert post(routed_server, "unload_lora_adapter", {"lora_name": "sentiment"}).status_code == 200
    try:
        assert post(routed_server, "completions", prompt).headers["x-loraplex-adapter"] != "sentiment"
    finally:
        loaded = post(routed_server, "load_lora_adapter", {"lora_name": "sentiment",
                                                           "lora_path": str(DEMO_ADAPTERS / "sentiment")})
    assert loaded.status_code == 200, loaded.text
    assert post(routed_server, "completions", prompt).headers["x-loraplex-adapter"] == "sentiment"
