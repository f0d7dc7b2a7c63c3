"""Small real PEFT adapters on a tiny Llama config (3 layers), written by the synthetic generator."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.adapter_tools.synthetic import SyntheticSpec, make_bank, write_adapter

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)


@pytest.fixture(scope="session")
def tiny_config():
    from transformers import LlamaConfig

    return LlamaConfig(**TINY)


@pytest.fixture(scope="session")
def bank(tiny_config):
    return make_bank(tiny_config, seed=0, dtype=torch.float32)


@pytest.fixture
def make_adapter(tmp_path, tiny_config, bank) -> Callable[..., Path]:
    """make_adapter(name, rank=4, modules=("q_proj", "v_proj"), layers=None, alpha=8.0, rslora=False) -> folder."""
    counter = iter(range(10_000))

    def make(name: str = "a", rank: int = 4, modules: tuple[str, ...] = ("q_proj", "v_proj"),
             layers: list[int] | None = None, alpha: float = 8.0, rslora: bool = False, root: Path | None = None):
        path = (root or tmp_path) / name
        rng = np.random.default_rng(next(counter))
        write_adapter(path, tiny_config, SyntheticSpec(rank, alpha, rslora, modules), rng, bank, layers)
        return path

    return make
