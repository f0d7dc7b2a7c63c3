"""Start-up leaves the objects it built out of the collector's full passes (gc.freeze), so a full collection
during serving walks only what requests made; and once serving, the engine thread's OpenMP team is the only one."""

import asyncio
import gc
import os

import pytest
import torch
from fastapi.testclient import TestClient

from kernels.cpu.openmp import _runtime
from server.api.settings import ServerSettings
from server.config import EngineConfig
from server.startup import build_server


@pytest.fixture
def thawed():
    yield
    gc.unfreeze()


def test_build_server_freezes_what_start_up_built(thawed):
    engine, app = build_server(ServerSettings(), EngineConfig(dtype="float32", pool_mb=64, max_model_len=256))
    tracked = gc.get_objects()  # every generation but the frozen one
    assert gc.get_freeze_count() > 10_000
    for obj in (engine, engine.engine, engine.engine.tokenizer, app):
        assert gc.is_tracked(obj) and not any(o is obj for o in tracked)
    engine.shutdown()


@pytest.mark.skipif(_runtime() is None, reason="no libgomp with omp_pause_resource_all")
def test_the_engine_threads_team_is_the_only_one(thawed):
    """The builder's team ends when the engine starts (a second idle team makes libgomp cut every barrier's
    spin: ~170 context switches a step), and the app's to_thread workers keep none between jobs."""
    torch.set_num_threads(2)
    engine, app = build_server(ServerSettings(), EngineConfig(dtype="float32", pool_mb=64, max_model_len=256,
                                                              num_threads=2))
    threads = lambda: len(os.listdir("/proc/self/task"))  # noqa: E731
    torch.ones(1 << 22).exp()  # the builder's team exists
    before = threads()
    engine.start()
    try:
        assert threads() == before - 1 + 1  # the builder's worker gone, the engine thread come
        with TestClient(app) as client:
            started = threads()
            client.portal.call(asyncio.to_thread, lambda: torch.ones(1 << 22).exp())
            assert threads() == started + 1  # the executor's worker, and no team beside it
    finally:
        engine.shutdown()
