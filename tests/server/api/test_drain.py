"""SIGTERM: stop admitting (503), let the in-flight request finish, exit 0."""

import signal

import httpx
import pytest

from tests.server.api.harness import MODEL, start_server, stop_server, wait_until

TOKENS = 200


@pytest.fixture
def doomed_server(tmp_path):
    s = start_server(tmp_path, "--drain-timeout", "120")
    yield s
    stop_server(s)


def test_sigterm_drains_then_exits_zero(doomed_server):
    server = doomed_server
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": TOKENS, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: {")  # in flight: it has produced a token

        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(f"{server.url}/health").status_code == 503, what="/health to report draining")
        refused = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "draining" and int(refused.headers["retry-after"]) >= 0

        rest = list(lines)
    events = [line for line in rest if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"finish_reason":"length"' in events[-2]
    assert server.proc.wait(60) == 0
    assert "draining 1 in-flight" in server.log.read_text()
