"""Under Ray, a replica holds (loads) a request's model only for requests that carry the API key, and
names travel percent-encoded from the proxy. Before: ReplicaTag ran outside the key check, so anyone
could make replicas load adapters, and a non-latin-1 `model` raised in the proxy."""

import asyncio

from server import header_names
from server.api.auth import ApiKeyAuth
from server.ray_serve.model_header import model_of
from server.ray_serve.replica_tag import ReplicaTag


def _run(authorization: bytes | None, model_id: str) -> list[str]:
    held: list[str] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def hold(name: str) -> None:
        held.append(name)

    auth = ApiKeyAuth(app, api_key="k")
    tag = ReplicaTag(app, "r1", model_id=lambda: model_id, known=lambda n: n in {"日本", "a"}, hold=hold,
                     authorized=auth.allowed)
    headers = [(b"authorization", authorization)] if authorization else []
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": headers}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    asyncio.run(tag(scope, receive, send))
    return held


def test_no_key_no_hold():
    assert _run(None, "a") == []
    assert _run(b"Bearer wrong", "a") == []
    assert _run(b"Bearer k", "a") == ["a"]


def test_unicode_model_names_round_trip_through_the_proxy_header():
    encoded = model_of('{"model": "日本"}'.encode())
    assert encoded is not None and encoded.isascii()
    assert _run(b"Bearer k", encoded) == ["日本"]
    assert model_of(b'{"model": "\\ud800"}') is None  # not Unicode: no header, the replica answers 400
    assert header_names.decode("%ZZ%E6") != ""  # a malformed escape names no model, and does not raise
