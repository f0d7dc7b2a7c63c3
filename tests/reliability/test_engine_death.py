"""/health never says ready while requests fail: steps that keep failing turn it 503 ("failing");
an engine thread that dies turns it 503 and the process exits 1, so a supervisor restarts it.

Uses the test-only fault injector (LORAPLEX_FAULTS) to make every step fail, and then to make the
recovery itself fail. Before: the engine thread could die while /health answered 200 forever.
"""

import contextlib

import httpx
import pytest

from server.engine.async_engine import UNHEALTHY_AFTER
from tests.server.api.harness import MODEL, start_server, stop_server, wait_until

pytestmark = pytest.mark.slow
BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 2}


def test_failing_steps_turn_health_503_but_the_server_stays_up(tmp_path):
    server = start_server(tmp_path, env={"LORAPLEX_FAULTS": "step=1.0"})
    try:
        for _ in range(UNHEALTHY_AFTER):
            r = httpx.post(f"{server.url}/v1/completions", json=BODY, timeout=60)
            assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
        health = httpx.get(f"{server.url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "failing"
        assert server.proc.poll() is None
    finally:
        stop_server(server)


def test_a_dead_engine_thread_says_so_and_exits_1(tmp_path):
    server = start_server(tmp_path, env={"LORAPLEX_FAULTS": "step=1.0,recover=1.0"})
    try:
        r = httpx.post(f"{server.url}/v1/completions", json=BODY, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead", r.text
        seen = []

        def exited() -> bool:
            with contextlib.suppress(httpx.TransportError):
                seen.append(httpx.get(f"{server.url}/health", timeout=2).status_code)
            return server.proc.poll() is not None

        wait_until(exited, 30, "the server to exit")
        assert server.proc.returncode == 1
        assert 200 not in seen
        assert "engine loop died" in server.log.read_text()
    finally:
        stop_server(server)
