"""schemathesis against the app's own OpenAPI schema, in process with a real engine: valid and invalid
requests alike never get a 5xx, and every 4xx carries an OpenAI error body.

CI runs ~900 examples; LORAPLEX_FUZZ=full runs 400 per generation case (3,200 in all, tens of minutes).
"""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from server.api import ServerSettings, build_app
from server.engine.async_engine import AsyncEngine
from tests.server.api.harness import MODEL

POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
FULL = os.environ.get("LORAPLEX_FUZZ") == "full"
GEN, ADMIN = (400, 400) if FULL else (150, 50)
CASES = [  # (method, path, mode, examples); GET routes take no input to get wrong
    ("POST", "/v1/completions", POSITIVE, GEN),
    ("POST", "/v1/completions", NEGATIVE, GEN),
    ("POST", "/v1/chat/completions", POSITIVE, GEN),
    ("POST", "/v1/chat/completions", NEGATIVE, GEN),
    ("POST", "/v1/load_lora_adapter", POSITIVE, ADMIN),
    ("POST", "/v1/load_lora_adapter", NEGATIVE, ADMIN),
    ("POST", "/v1/unload_lora_adapter", POSITIVE, ADMIN),
    ("POST", "/v1/unload_lora_adapter", NEGATIVE, ADMIN),
    ("GET", "/v1/models", POSITIVE, 5),
    ("GET", "/health", POSITIVE, 5),
    ("GET", "/metrics", POSITIVE, 5),
]


@pytest.fixture(scope="module")
def api_schema(make_engine, tmp_path_factory):
    engine = AsyncEngine(make_engine(max_model_len=128))
    engine.start()
    settings = ServerSettings(max_tokens_cap=3, max_queue=1024, enable_adapter_admin=True, allowed_hosts=["*"],
                              allowed_adapter_roots=[str(tmp_path_factory.mktemp("fuzz-root"))])
    app = build_app(engine, settings)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    engine.shutdown()


@pytest.mark.parametrize(("method", "path", "mode", "examples"), CASES, ids=[f"{m} {p} {g}" for m, p, g, _ in CASES])
def test_no_server_errors(api_schema, method, path, mode, examples):
    statuses: list[int] = []

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=api_schema[path][method].as_strategy(generation_mode=mode), served_model=st.integers(0, 9).map(bool))
    def check(case, served_model):
        if isinstance(case.body, dict) and served_model:  # mostly the served model, so requests reach the engine
            case.body["model"] = MODEL
        response = case.call(timeout=120)  # generous: a 128-choice request on a busy CPU takes a while
        statuses.append(response.status_code)
        assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]

    check()
    print(f"{method} {path} {mode.name}: {len(statuses)} examples, statuses {sorted(set(statuses))}")
    assert len(statuses) >= examples // 2  # hypothesis really ran it
    if path.endswith("completions") and mode is POSITIVE:
        assert 200 in statuses  # some requests went all the way through the engine
