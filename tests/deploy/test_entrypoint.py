"""The image's run step without Docker: deploy/docker-entrypoint.sh from the project venv, configured by the
Dockerfile's LORAPLEX_* ENV (host 0.0.0.0 included) plus test sizing, all as env; no flags.

The image's install step in a clean venv is test_install_clean_venv.py (slow, opt-in)."""

import subprocess
import sys
from pathlib import Path

import openai
import pytest

from server.config import default_cache_dir
from tests.deploy.files import DEMO_ADAPTERS, ENTRYPOINT, HEALTHCHECK, dockerfile_env
from tests.deploy.server_env import free_port, image_env, sizing_env, start_entrypoint, stop

BIN = Path(sys.executable).parent


def healthcheck(env: dict[str, str]) -> int:
    return subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, timeout=30).returncode


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    allowed = tmp_path_factory.mktemp("allowed")
    env = image_env(
        BIN, **sizing_env(free_port()), LORAPLEX_ADAPTER_DIR=str(DEMO_ADAPTERS),
        LORAPLEX_ALLOWED_ADAPTER_ROOT=str(allowed), LORAPLEX_CACHE_DIR=str(default_cache_dir()),
    )
    server = start_entrypoint(tmp_path_factory.mktemp("entrypoint"), env)
    yield server
    stop(server)


def test_image_env_binds_all_interfaces():
    assert dockerfile_env()["LORAPLEX_HOST"] == "0.0.0.0"


def test_serves_a_completion_from_env_alone(served):
    assert served.env["LORAPLEX_HOST"] == "0.0.0.0"
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    names = {m.id for m in client.models.list().data}
    assert {d.name for d in DEMO_ADAPTERS.iterdir() if d.is_dir()} <= names
    out = client.completions.create(model="sentiment", prompt="The movie was great.", max_tokens=4, temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length") and out.usage.completion_tokens >= 1
    assert healthcheck(served.env) == 0


def test_sigterm_drains_and_exits_zero(served):
    assert stop(served) == 0
    assert healthcheck(served.env) == 1  # nothing listening: the container would turn unhealthy


def test_a_command_argument_runs_instead_of_the_server(tmp_path):
    out = subprocess.run(["sh", str(ENTRYPOINT), "echo", "hello"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "hello\n"
