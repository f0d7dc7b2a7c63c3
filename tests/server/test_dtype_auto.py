"""--dtype auto: fp32 where the CPU matmul kernel serves the weights, bf16 for dense weights on a CPU with
native bf16 matmuls and on CUDA; whatever is named explicitly stays."""

import pytest

import server.config as config
from server.config import EngineConfig, resolve_dtype


@pytest.mark.parametrize("fast_bf16", [True, False])
@pytest.mark.parametrize(
    ("weights", "model", "kernel_serves"),
    [("gguf", None, True), ("bf16", None, True), ("auto", None, True), ("auto", "/m/SmolLM2.Q8_0.gguf", True),
     ("auto", "/m/hf-directory", False), ("fp32", None, False), ("fp32", "/m/x.gguf", False)],
)
def test_auto_on_cpu(monkeypatch, fast_bf16, weights, model, kernel_serves):
    monkeypatch.setattr(config, "cpu_has_fast_bf16", lambda: fast_bf16)
    want = "bfloat16" if fast_bf16 and not kernel_serves else "float32"
    assert resolve_dtype("auto", "cpu", weights, model) == want
    assert EngineConfig(weights=weights, model=model).dtype == want


def test_cuda_and_named_dtypes(monkeypatch):
    monkeypatch.setattr(config, "cpu_has_fast_bf16", lambda: True)
    assert resolve_dtype("auto", "cuda", "fp32", None) == "bfloat16"
    assert resolve_dtype("bfloat16", "cpu", "gguf", None) == "bfloat16"
    assert resolve_dtype("float32", "cpu", "fp32", None) == "float32"
