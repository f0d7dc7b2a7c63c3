"""Server processes shared by the api tests."""

import pytest

from tests.server.api.harness import DEMO_ADAPTERS, start_server, stop_server, wait_until


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory):
    """The one directory run-time adapter loads may read from."""
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="session")
def server(tmp_path_factory, adapter_root):
    """The main server: default limits, room for 32 concurrent sequences, the demo adapters."""
    s = start_server(
        tmp_path_factory.mktemp("main"), "--max-num-seqs", "32", "--adapter-dir", str(DEMO_ADAPTERS),
        "--allowed-adapter-root", str(adapter_root), "--enable-adapter-admin",
    )
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def strict_server(tmp_path_factory):
    """API key, one sequence at a time, a queue of one, 4 KiB bodies."""
    s = start_server(
        tmp_path_factory.mktemp("strict"), "--api-key", "sesame", "--max-num-seqs", "1", "--max-queue", "1",
        "--max-body-bytes", "4096",
    )
    yield s
    stop_server(s)


@pytest.fixture
def idle(server):
    """Wait until the main server has nothing in flight (a previous test's aborts may still be landing)."""
    wait_until(
        lambda: server.sample("loraplex_requests_running") == 0 and server.sample("loraplex_requests_waiting") == 0,
        what="the server to go idle",
    )
    return server


@pytest.fixture(scope="session")
def routed_server(tmp_path_factory):
    """The demo adapters behind routers: `auto` (embedding), `ops` (rules file), `arrow`, `blend` (arrow top-2),
    `tok` (arrow per token over 2 candidates)."""
    rules = tmp_path_factory.mktemp("rules") / "rules.json"
    rules.write_text('{"rules": [{"pattern": "^Reverse", "adapter": "reverse"}], "default": null}')
    s = start_server(
        tmp_path_factory.mktemp("routed"), "--adapter-dir", str(DEMO_ADAPTERS), "--router", "auto=embedding",
        "--router", f"ops=rules:{rules}", "--router", "arrow=arrow", "--router", "blend=arrow:top_k=2,fallback=off",
        "--router", "tok=arrow:mode=token,top_k=2,temperature=1.0,candidates=2",
        "--allowed-adapter-root", str(DEMO_ADAPTERS), "--enable-adapter-admin",
    )
    yield s
    stop_server(s)
