"""Unicode and range errors anywhere in a request are 400s, never 500s; names that are not latin-1
travel percent-encoded in headers, so a routed stream cannot fail after admission and leak its ticket.

Before: a lone surrogate in `model`, a prompt or chat content, and an out-of-range token id sent to a
router each got a 500; a streamed request routed to a non-latin-1 adapter raised while setting its
header after admission, and after --max-queue of them every request got 429.
"""

import json
from urllib.parse import unquote

import httpx
import pytest

from tests.reliability.conftest import ADMIN_KEY, UNICODE_ADAPTER
from tests.server.api.harness import MODEL

pytestmark = pytest.mark.slow
SURROGATE = "\\ud800"  # as JSON writes it: json.loads gives a str that no codec can encode


def raw_post(server, route: str, body: str, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{route}", content=body.encode(), timeout=60,
                      headers={"content-type": "application/json", **(headers or {})})


def assert_400(r: httpx.Response) -> dict:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize("route,body", [
    ("completions", f'{{"model": "{SURROGATE}", "prompt": "hi"}}'),
    ("completions", f'{{"model": "{MODEL}", "prompt": "a {SURROGATE} b"}}'),
    ("completions", f'{{"model": "{MODEL}", "prompt": ["ok", "{SURROGATE}"]}}'),
    ("completions", f'{{"model": "{MODEL}", "prompt": "hi", "stop": ["{SURROGATE}"]}}'),
    ("completions", f'{{"model": "{MODEL}", "prompt": "hi", "user": "{SURROGATE}"}}'),
    ("chat/completions", f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "{SURROGATE}"}}]}}'),
    ("chat/completions", f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": '
                         f'[{{"type": "text", "text": "{SURROGATE}"}}]}}]}}'),
    ("chat/completions", f'{{"model": "auto", "messages": [{{"role": "user", "content": "x{SURROGATE}"}}]}}'),
    ("completions", '{"model": "auto", "prompt": [99999999999]}'),
    ("completions", '{"model": "auto", "prompt": [49152]}'),  # one past the vocabulary
    ("completions", '{"model": "ops", "prompt": [[1], [99999999999999999999]]}'),
    ("completions", f'{{"model": "{MODEL}", "prompt": [-1]}}'),
])
def test_bad_text_or_ids_are_400(rserver, route, body):
    assert_400(raw_post(rserver, route, body))


def test_admin_bodies_with_bad_unicode_are_400(rserver):
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert_400(raw_post(rserver, "load_lora_adapter", f'{{"lora_name": "{SURROGATE}", "lora_path": "/x"}}', auth))
    assert_400(raw_post(rserver, "load_lora_adapter", f'{{"lora_name": "a", "lora_path": "/x/{SURROGATE}"}}', auth))
    assert_400(raw_post(rserver, "unload_lora_adapter", f'{{"lora_name": "{SURROGATE}"}}', auth))


def routed_stream(server) -> tuple[str, list[str]]:
    body = {"model": "ops", "prompt": "Reverse: one two three\nAnswer:", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        return r.headers["x-loraplex-adapter"], [line for line in r.iter_lines() if line]


def test_routed_non_latin1_adapter_streams_with_an_encoded_header_and_frees_its_ticket(rserver):
    for _ in range(6):  # more than --max-queue 4: a leaked ticket would turn the last ones into 429
        header, lines = routed_stream(rserver)
        assert unquote(header) == UNICODE_ADAPTER and header.isascii()
        assert lines[-1] == "data: [DONE]"
        assert "error" not in json.loads(lines[0].removeprefix("data: "))
    plain = httpx.post(f"{rserver.url}/v1/completions", json={"model": "ops", "prompt": "Reverse: a b\nAnswer:",
                                                                "max_tokens": 2}, timeout=60)
    assert plain.status_code == 200
    assert unquote(plain.headers["x-loraplex-adapter"]) == UNICODE_ADAPTER == plain.json()["loraplex"]["adapter"]
    assert rserver.sample("loraplex_requests_waiting") == 0
