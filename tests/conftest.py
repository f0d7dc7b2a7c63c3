"""Shared fixtures: the real default model (SmolLM2-135M-Instruct), loaded once per session."""

import pytest
import torch

from server.config import EngineConfig, default_cache_dir
from server.engine.llm_engine import LLMEngine
from server.model.loader import build_model, resolve_checkpoint

MAX_POSITIONS = 2048


@pytest.fixture(scope="session")
def checkpoint():
    return resolve_checkpoint(None, default_cache_dir())


@pytest.fixture(scope="session")
def fp32_model(checkpoint):
    return build_model(checkpoint, MAX_POSITIONS, torch.float32, "cpu")


@pytest.fixture(scope="session")
def make_engine(checkpoint, fp32_model):
    """Engines sharing one fp32 model, each with its own pool and scheduler."""

    def make(**overrides) -> LLMEngine:
        cfg = EngineConfig(**{"dtype": "float32", "pool_mb": 64, "max_model_len": MAX_POSITIONS, **overrides})
        return LLMEngine(cfg, checkpoint, fp32_model)

    return make


@pytest.fixture(scope="session")
def hf_fp32(checkpoint):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint.directory, dtype=torch.float32).eval()
