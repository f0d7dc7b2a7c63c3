"""The image's install step for real: deploy/install.sh into a brand-new venv (no --system-site-packages), from a
copy of exactly what the Dockerfile COPYs, then the entrypoint from that venv with an empty model cache.

Slow (about 70 s of pip on this machine, then a first start that converts the model), so opt-in:
LORAPLEX_SLOW_TESTS=1. torch comes from pip's configured index here (TORCH_INDEX empty), not from the
Dockerfile's default https://download.pytorch.org/whl/cpu, which this machine cannot reach."""

import os
import shutil
import subprocess
import sys

import openai
import pytest

from tests.deploy.files import HEALTHCHECK, INSTALL, REPO
from tests.deploy.server_env import free_port, image_env, sizing_env, start_entrypoint, stop

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("LORAPLEX_SLOW_TESTS") != "1", reason="slow: set LORAPLEX_SLOW_TESTS=1"),
]

COPIED = ["pyproject.toml", "README.md", "server", "kernels", "router"]  # the Dockerfile's COPY sources


def test_install_then_serve_from_a_clean_venv(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in COPIED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(TORCH_INDEX="", PYTHON=shutil.which("python3") or sys.executable)
    subprocess.run(["sh", str(INSTALL), str(venv), str(src)], env=env, check=True, timeout=600)

    python = venv / "bin" / "python"
    probe = "import server, sys; print(server.__file__); print(sys.flags.no_site)"
    where = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert str(venv) in where.stdout, "the project must import from the new venv, not the repository"
    adapters = next((venv / "lib").glob("python3*/site-packages/server/adapters/demo/adapters"))

    run_env = image_env(
        venv / "bin", **sizing_env(free_port()), LORAPLEX_ADAPTER_DIR=str(adapters),
        LORAPLEX_ALLOWED_ADAPTER_ROOT=str(adapters), LORAPLEX_CACHE_DIR=str(tmp_path / "cache"),
    )
    run_env.pop("PYTHONPATH", None)
    server = start_entrypoint(tmp_path, run_env)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        out = client.completions.create(model="sentiment", prompt="Great film.", max_tokens=4, temperature=0)
        assert out.usage.completion_tokens >= 1
        assert subprocess.run([str(python), str(HEALTHCHECK)], env=run_env, timeout=30).returncode == 0
    finally:
        assert stop(server) == 0
