"""Live servers for the reliability tests (real processes, real HTTP)."""

import shutil

import pytest

from tests.server.api.harness import DEMO_ADAPTERS, start_server, stop_server

ADMIN_KEY = "admin-sesame"
API_KEY = "api-sesame"
UNICODE_ADAPTER = "日本-reverse"  # not latin-1: headers must carry it percent-encoded


@pytest.fixture(scope="session")
def reliability_root(tmp_path_factory):
    """An allowed adapter root holding a copy of the demo `reverse` adapter under a non-latin-1 name."""
    root = tmp_path_factory.mktemp("rel-root")
    shutil.copytree(DEMO_ADAPTERS / "reverse", root / UNICODE_ADAPTER)
    shutil.copytree(DEMO_ADAPTERS / "sentiment", root / "sentiment-copy")
    return root


@pytest.fixture(scope="session")
def rserver(tmp_path_factory, reliability_root):
    """Small limits, adapter admin on with its own key, a rules router choosing the non-latin-1 adapter."""
    rules = tmp_path_factory.mktemp("rel-rules") / "rules.json"
    rules.write_text(f'{{"rules": [{{"pattern": "^Reverse", "adapter": "{UNICODE_ADAPTER}"}}], "default": null}}')
    s = start_server(
        tmp_path_factory.mktemp("rel-main"), "--max-num-seqs", "2", "--max-queue", "4",
        "--adapter-dir", str(DEMO_ADAPTERS), "--adapter", f"{UNICODE_ADAPTER}={reliability_root / UNICODE_ADAPTER}",
        "--router", f"ops=rules:{rules}", "--router", "auto=embedding",
        "--enable-adapter-admin", "--admin-key", ADMIN_KEY, "--allowed-adapter-root", str(reliability_root),
        "--header-timeout", "1", "--body-timeout", "1", "--max-n", "4", "--max-prompts", "8",
        "--max-seqs-per-request", "16", "--max-logprob-entries", "4096",
    )
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory):
    """An API key, admin off, the demo adapters registered at start."""
    s = start_server(tmp_path_factory.mktemp("rel-keyed"), "--api-key", API_KEY, "--adapter-dir", str(DEMO_ADAPTERS))
    yield s
    stop_server(s)
