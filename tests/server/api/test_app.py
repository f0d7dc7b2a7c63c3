"""The app in process (no generation): CORS only when configured, the served model name, the health phases."""

import pytest
from fastapi.testclient import TestClient

from server.api import ServerSettings, build_app
from server.engine.async_engine import AsyncEngine

ORIGIN = "https://ui.example"
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}

TESTCLIENT = {"allowed_hosts": ["testserver"]}  # the Host header TestClient sends


@pytest.fixture(scope="module")
def engine(make_engine):
    return AsyncEngine(make_engine())  # never started: nothing here generates


def test_no_cors_headers_without_cors_origin(engine):
    with TestClient(build_app(engine, ServerSettings(**TESTCLIENT))) as client:
        r = client.options("/v1/chat/completions", headers=PREFLIGHT)
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in client.get("/v1/models", headers={"Origin": ORIGIN}).headers


def test_cors_allows_only_the_configured_origin(engine):
    with TestClient(build_app(engine, ServerSettings(cors_origins=[ORIGIN], api_key="k", **TESTCLIENT))) as client:
        r = client.options("/v1/chat/completions", headers=PREFLIGHT)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN  # no key needed
        r = client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_served_model_name(engine):
    with TestClient(build_app(engine, ServerSettings(served_model_name="smol", **TESTCLIENT))) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["smol"]
        r = client.post("/v1/completions", json={"model": "SmolLM2-135M-Instruct", "prompt": "x"})
        assert r.status_code == 404


def test_health_is_503_until_started(engine):
    app = build_app(engine, ServerSettings(**TESTCLIENT))
    client = TestClient(app)  # outside `with`: no lifespan, so the app never became ready
    r = client.get("/health")
    assert r.status_code == 503 and r.json() == {"status": "starting"} and "retry-after" in r.headers
    r = client.post("/v1/completions", json={"model": "SmolLM2-135M-Instruct", "prompt": "x", "max_tokens": 1})
    assert r.status_code == 503 and r.json()["error"]["code"] == "starting"
    with TestClient(app) as started:
        assert started.get("/health").json() == {"status": "ready"}
