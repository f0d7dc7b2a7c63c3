"""--dtype auto: fp32 where the CPU matmul kernel serves the weights, bf16 for dense weights on a CPU with
AMX and on CUDA (AVX512-BF16 alone keeps fp32); whatever is named explicitly stays."""

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


@pytest.mark.parametrize(("flags", "fast"), [("fpu avx2 avx512f avx512_bf16", False),
                                             ("avx512_bf16 amx_bf16 amx_tile", True), ("fpu avx2", False)])
def test_fast_bf16_means_amx(monkeypatch, flags, fast):
    monkeypatch.setattr(config.Path, "read_text", lambda self: f"flags\t\t: {flags}\n")
    assert config.cpu_has_fast_bf16() is fast


def test_cuda_and_named_dtypes(monkeypatch):
    monkeypatch.setattr(config, "cpu_has_fast_bf16", lambda: True)
    assert resolve_dtype("auto", "cuda", "fp32", None) == "bfloat16"
    assert resolve_dtype("bfloat16", "cpu", "gguf", None) == "bfloat16"
    assert resolve_dtype("float32", "cpu", "fp32", None) == "float32"
