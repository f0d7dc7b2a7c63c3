"""kill -9 at the worst moments, then a restart on the same cache: the server comes back whole.

Real `loraplex serve` processes on a private LORAPLEX_CACHE_DIR, so the first start really converts
the default GGUF model (~20 s); the file takes about a minute and a half.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.model.loader import COMPLETE_MARKER
from tests.server.api.harness import DEMO_ADAPTERS, MODEL, Server, free_port, start_server, stop_server, wait_until

REPO = Path(__file__).resolve().parents[2]
ADAPTERS = sorted(p.name for p in DEMO_ADAPTERS.iterdir() if p.is_dir())

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache root for the module: the first test's killed conversion, the second test's restarts."""
    return tmp_path_factory.mktemp("kill-cache") / "cache"


def _env(cache: Path) -> dict[str, str]:
    return {"LORAPLEX_CACHE_DIR": str(cache)}


def _start(log_dir: Path, cache: Path) -> Server:
    return start_server(log_dir, "--adapter-dir", str(DEMO_ADAPTERS), env=_env(cache))


def _tmp_dirs(cache: Path) -> list[Path]:
    models = cache / "models"
    return list(models.glob("*.tmp*")) if models.is_dir() else []


def assert_whole_cache(cache: Path) -> None:
    """One converted model, marked complete; no tmp dirs or half copies next to it."""
    entries = sorted(p.name for p in (cache / "models").iterdir() if p.is_dir())
    assert len(entries) == 1, entries
    assert (cache / "models" / entries[0] / COMPLETE_MARKER).is_file()


def assert_serves(server: Server) -> None:
    client = server.client()
    ids = {m.id for m in client.models.list().data}
    assert {MODEL, *ADAPTERS} <= ids, ids
    for model in (MODEL, ADAPTERS[0]):
        r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
        assert r.choices[0].text and r.usage.completion_tokens > 0


def test_killed_while_converting_the_model_restarts_whole(tmp_path, cache):
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(free_port()), "--dtype", "float32"]
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **_env(cache)})
    try:
        wait_until(lambda: proc.poll() is not None or _tmp_dirs(cache), 300, "the conversion to start writing")
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs
        proc.wait()
    assert _tmp_dirs(cache), f"no conversion in progress when killed:\n{log.read_text()[-3000:]}"

    server = _start(tmp_path, cache)
    try:
        assert_serves(server)
        assert_whole_cache(cache)
    finally:
        stop_server(server)


def test_killed_mid_request_serves_again(tmp_path, cache):
    server = _start(tmp_path, cache)
    try:
        stream = server.client().completions.create(
            model=ADAPTERS[0], prompt="Once upon a time", max_tokens=200, temperature=0, stream=True
        )
        next(iter(stream))  # the request is decoding
    finally:
        server.proc.kill()
        server.proc.wait()
    stream.close()

    server = _start(tmp_path, cache)
    try:
        assert_serves(server)
        assert_whole_cache(cache)
    finally:
        stop_server(server)
