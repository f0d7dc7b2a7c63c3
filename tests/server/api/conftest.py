"""Server processes shared by the api tests."""

import pytest

from tests.server.api.harness import start_server, stop_server, wait_until


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The main server: default limits, room for 32 concurrent sequences."""
    s = start_server(tmp_path_factory.mktemp("main"), "--max-num-seqs", "32")
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
