"""EngineConfig.weights / --weights: the choices, the env default, and what auto resolves to."""

import dataclasses
from pathlib import Path

import pytest

from server.config import EngineConfig
from server.flags import build_parser
from server.model.loader import resolve_weights


def parse(argv):
    parser, finish = build_parser()
    args = parser.parse_args(argv)
    finish(args)
    return args


def test_flag_env_and_config(monkeypatch):
    assert parse(["serve"]).weights == "auto"
    assert parse(["serve", "--weights", "fp32"]).weights == "fp32"
    monkeypatch.setenv("LORAPLEX_WEIGHTS", "gguf")
    assert parse(["serve"]).weights == "gguf"
    assert EngineConfig().weights == "auto"
    with pytest.raises(ValueError, match="weights"):
        EngineConfig(weights="int4")


def test_auto_picks_the_blocks_of_a_gguf_model_on_cpu(checkpoint):
    from kernels.cpu.build import load

    assert checkpoint.source is not None and checkpoint.source.suffix == ".gguf"
    assert resolve_weights("auto", checkpoint, "cpu") == ("gguf" if load("quant_matmul") else "fp32")
    assert resolve_weights("auto", checkpoint, "cuda") == "fp32"
    assert resolve_weights("fp32", checkpoint, "cpu") == "fp32"


def test_an_hf_directory_has_no_blocks(checkpoint):
    hf = dataclasses.replace(checkpoint, source=None, directory=Path("/some/hf/dir"))
    assert resolve_weights("auto", hf, "cpu") == "fp32"
    with pytest.raises(ValueError, match="needs a .gguf model"):
        resolve_weights("gguf", hf, "cpu")


def test_bf16_weights_are_a_cpu_choice(checkpoint):
    assert parse(["serve", "--weights", "bf16"]).weights == "bf16"
    assert resolve_weights("bf16", checkpoint, "cpu") == "bf16"
    with pytest.raises(ValueError, match="--dtype bfloat16"):
        resolve_weights("bf16", checkpoint, "cuda")
