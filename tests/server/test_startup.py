"""Start-up leaves the objects it built out of the collector's full passes (gc.freeze), so a full collection
during serving walks only what requests made."""

import gc

import pytest

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
