"""Start-up leaves the objects it built out of the collector's full passes (gc.freeze), so a full collection
during serving walks only what requests made; and once serving, the engine thread's OpenMP team is the only one."""

import asyncio
import gc
import os
import threading

import pytest
import torch
from fastapi.testclient import TestClient

from kernels.cpu.openmp import _runtime, release_team
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


def tids() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


@pytest.mark.skipif(_runtime() is None, reason="no libgomp with omp_pause_resource_all")
def test_the_engine_threads_team_is_the_only_one(thawed):
    """The builder's team ends when the engine starts (a second idle team makes libgomp cut every barrier's
    spin: ~170 context switches a step), and the app's to_thread workers keep none between jobs."""
    threads_before = torch.get_num_threads()
    engine, app = build_server(ServerSettings(), EngineConfig(dtype="float32", pool_mb=64, max_model_len=256,
                                                              num_threads=2))
    release_team()  # then a team of our own making, whose workers we know
    before = tids()
    torch.ones(1 << 22).exp()
    builders_team = tids() - before
    assert len(builders_team) == 1
    engine.start()
    try:
        assert not builders_team & tids()
        with TestClient(app) as client:
            before = tids()

            def job() -> int:
                torch.ones(1 << 22).exp()
                return threading.get_native_id()

            worker = client.portal.call(asyncio.to_thread, job)
            assert tids() - before <= {worker}  # the executor's worker (if new), and no team beside it
    finally:
        engine.shutdown()
        torch.set_num_threads(threads_before)  # the engine config set 2 for the whole process
