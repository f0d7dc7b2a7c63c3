"""Connections: slow headers and bodies are cut off, --api-key covers /metrics and the docs, and the
Host header must name the server (DNS rebinding).

Before: no header or body timeout (a slow client held its socket and buffer forever), /metrics,
/docs and /openapi.json stayed open with --api-key, and any Host header was served.
"""

import socket
import time

import httpx
import pytest

from tests.reliability.conftest import API_KEY

pytestmark = pytest.mark.slow


def _connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=20)
    return s


def test_a_client_that_never_finishes_its_headers_is_disconnected(rserver):
    with _connect(rserver) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and nothing more
        assert s.recv(1024) == b""  # closed by the server (--header-timeout 1) well before our 20 s timeout


def test_a_client_that_never_finishes_its_body_gets_408(rserver):
    with _connect(rserver) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"model\": ")
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


def test_keep_alive_and_normal_requests_still_work(rserver):
    with httpx.Client(base_url=rserver.url, timeout=60) as client:
        for _ in range(3):
            assert client.get("/health").status_code == 200
            time.sleep(0.2)


def test_api_key_covers_metrics_and_docs(keyed_server):
    assert httpx.get(f"{keyed_server.url}/metrics").status_code == 401
    auth = {"authorization": f"Bearer {API_KEY}"}
    assert httpx.get(f"{keyed_server.url}/metrics", headers=auth).status_code == 200
    for path in ("/docs", "/openapi.json"):
        assert httpx.get(f"{keyed_server.url}{path}", headers=auth).status_code == 404
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200  # probes carry no key


@pytest.mark.parametrize("host,ok", [
    ("evil.example", False), ("evil.example:8000", False), ("127.0.0.1.nip.io", False),
    ("localhost", True), ("127.0.0.1:1234", True), ("[::1]:80", True),
])
def test_host_header_must_name_this_server(rserver, host, ok):
    r = httpx.get(f"{rserver.url}/v1/models", headers={"host": host})
    if ok:
        assert r.status_code == 200
    else:
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
