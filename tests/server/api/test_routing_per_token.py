"""`--router tok=arrow:mode=token,...`: candidates picked without a routing pass, every token routed among them."""

import httpx

from tests.server.api.harness import MODEL

REVERSE = "Reverse the words: red green blue\nReversed:"


def post(server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)


def test_per_token_router_serves_its_candidates_and_says_so(routed_server):
    body = {"model": "tok", "prompt": REVERSE, "max_tokens": 6, "temperature": 0}
    first, again = post(routed_server, body), post(routed_server, body)
    assert first.status_code == 200, first.text
    info = first.json()["loraplex"]
    cands = info["per_token"]["candidates"]
    assert info["router"] == "tok" and len(cands) == 2 and "reverse" in cands
    assert info["per_token"]["top_k"] == 2 and info["per_token"]["temperature"] == 1.0
    assert first.headers["x-loraplex-adapter"] == ",".join(cands)
    assert again.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]  # greedy: deterministic
    base = post(routed_server, {**body, "model": MODEL})
    assert first.json()["choices"][0]["text"] != base.json()["choices"][0]["text"]


def test_per_token_router_streams_and_chats(routed_server):
    chat = httpx.post(f"{routed_server.url}/v1/chat/completions", timeout=60, json={
        "model": "tok", "max_tokens": 3, "messages": [{"role": "user", "content": REVERSE}]})
    assert chat.status_code == 200 and len(chat.json()["loraplex"]["per_token"]["candidates"]) == 2
    with httpx.stream("POST", f"{routed_server.url}/v1/completions", timeout=60, json={
        "model": "tok", "prompt": REVERSE, "max_tokens": 3, "stream": True}) as r:
        assert r.status_code == 200 and "[DONE]" in r.read().decode()
