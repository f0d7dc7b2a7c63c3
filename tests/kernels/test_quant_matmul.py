"""Matmul on GGUF blocks: the twin's decoding against gguf's own, the C kernel (every ISA path this CPU
runs, both the register and the tiled path) against the twin and an fp64 reference on the dequantized
weights; bad inputs refused."""

import gguf
import numpy as np
import pytest
import torch

from kernels import ops
from kernels.cpu import quant_matmul as cpu_quant
from kernels.torch.quant_matmul import BF16, BLOCK_BYTES, F32, Q4_0, Q4_1, Q8_0, TYPE_NAMES, dequantize, quant_matmul

needs_cc = pytest.mark.skipif(not cpu_quant.available(torch.zeros(1)), reason="no C compiler: the CPU kernel is off")

TYPES = [Q8_0, Q4_0, Q4_1]
ROWS = [1, 3, 12, 16, 40, 64, 300]  # 12: part of a 16-lane vector; 40: a partial group of x rows; 300: two chunks
# (out, in): under, at and past the kernel's 8-row tile and 512-input chunk, odd row counts
SHAPES = [(1, 32), (37, 96), (8, 512), (130, 576), (19, 1056)]


def isas() -> list[int]:
    """Each path by name, then -1: the best, which also takes the packed outer-product path for many rows."""
    return [*range(cpu_quant.best_isa() + 1), -1] if cpu_quant.available(torch.zeros(1)) else []


def random_blocks(qtype: int, rows: int, k: int, seed: int = 0) -> torch.Tensor:
    """(rows, k/32 * block bytes): random nibbles/int8s under random finite fp16 scales, subnormal ones included."""
    rng = np.random.default_rng(seed)
    nb, bb = k // 32, BLOCK_BYTES[qtype]
    raw = rng.integers(0, 256, size=(rows, nb, bb), dtype=np.uint8)
    scales = rng.standard_normal((rows, nb, 2)).astype(np.float16) * np.float16(0.05)
    scales.flat[::7] = np.float16(3e-6)  # subnormal in fp16
    raw[..., :2] = scales[..., :1].view(np.uint8)
    if qtype == Q4_1:
        raw[..., 2:4] = scales[..., 1:].view(np.uint8)
    return torch.from_numpy(raw.reshape(rows, nb * bb))


def quantized(qtype: int, rows: int, k: int, seed: int = 0) -> torch.Tensor:
    """Blocks of gguf's own quantizer (what a real file holds), of a normal weight."""
    w = np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32)
    return torch.from_numpy(gguf.quants.quantize(w, gguf.GGMLQuantizationType(qtype)).copy())


def gguf_dequantize(blocks: torch.Tensor, qtype: int) -> torch.Tensor:
    out = gguf.quants.dequantize(blocks.numpy(), gguf.GGMLQuantizationType(qtype))
    return torch.from_numpy(np.ascontiguousarray(out))


def assert_matmul_close(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    """y equals x @ w^T up to summation order: elementwise within 1e-5 of sum |x_k w_k|."""
    ref = x.double() @ w.double().T
    bound = 1e-5 * (x.double().abs() @ w.double().abs().T) + 1e-30
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert ((y.double() - ref).abs() <= bound).all(), float(((y.double() - ref).abs() / bound).max())


@pytest.fixture
def threads():
    saved = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(saved)


@pytest.mark.parametrize("qtype", TYPES, ids=TYPE_NAMES.get)
@pytest.mark.parametrize("make", [random_blocks, quantized], ids=["raw", "quantized"])
def test_twin_decodes_blocks_as_gguf_does(qtype, make):
    blocks = make(qtype, 13, 96)
    assert torch.equal(dequantize(blocks, qtype), gguf_dequantize(blocks, qtype))


@needs_cc
@pytest.mark.parametrize("qtype", TYPES, ids=TYPE_NAMES.get)
@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize("gemv_rows", [0, 64], ids=["tiled", "registers"])
def test_c_kernel_decodes_blocks_exactly(qtype, isa, gemv_rows):
    # x = I: every output is one product 1 * w, so y is the dequantized weight itself, bit for bit
    blocks = random_blocks(qtype, 21, 576, seed=1)
    y = cpu_quant.run(torch.eye(576), blocks, qtype, isa=isa, gemv_rows=gemv_rows)  # (576, 21)
    assert torch.equal(y.T, gguf_dequantize(blocks, qtype))


@pytest.mark.parametrize("qtype", TYPES, ids=TYPE_NAMES.get)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_twin_is_the_fp32_matmul_on_dequantized_weights(qtype, rows, shape):
    blocks = quantized(qtype, *shape)
    x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(rows))
    assert_matmul_close(quant_matmul(x, blocks, qtype), x, gguf_dequantize(blocks, qtype))


@needs_cc
@pytest.mark.parametrize("qtype", TYPES, ids=TYPE_NAMES.get)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("num_threads", [1, 2])
def test_c_kernel_sweep(qtype, rows, shape, num_threads, threads):
    threads(num_threads)
    blocks = random_blocks(qtype, *shape, seed=rows)
    x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(rows))
    w = gguf_dequantize(blocks, qtype)
    twin = quant_matmul(x, blocks, qtype)
    for isa in (-1, *isas()):  # -1: the path this CPU picks by rows (packed, wide) past gemv_rows
        for gemv_rows in (0, cpu_quant.GEMV_MAX_ROWS, 64):
            y = cpu_quant.run(x, blocks, qtype, isa=isa, gemv_rows=gemv_rows)
            assert_matmul_close(y, x, w)
            torch.testing.assert_close(y, twin, rtol=1e-5, atol=1e-5 * float(twin.abs().max()))
    assert_matmul_close(ops.quant_matmul(x, blocks, qtype), x, w)


@needs_cc
@pytest.mark.parametrize("qtype", TYPES, ids=TYPE_NAMES.get)
def test_strided_and_empty_inputs(qtype):
    blocks = quantized(qtype, 24, 64)
    wide = torch.randn(5, 100)
    x = wide[:, :64]  # rows 100 floats apart: read in place
    assert_matmul_close(cpu_quant.quant_matmul(x, blocks, qtype), x, gguf_dequantize(blocks, qtype))
    xt = torch.randn(64, 5).T  # column-major: copied first
    assert_matmul_close(cpu_quant.quant_matmul(xt, blocks, qtype), xt, gguf_dequantize(blocks, qtype))
    assert cpu_quant.quant_matmul(torch.zeros(0, 64), blocks, qtype).shape == (0, 24)


@needs_cc
@pytest.mark.parametrize("rows", [1, 16])
def test_bf16_x_is_widened_and_the_result_rounded(rows):
    blocks = quantized(Q4_1, 40, 128)
    x = torch.randn(rows, 128).to(torch.bfloat16)
    want = quant_matmul(x.float(), blocks, Q4_1).to(torch.bfloat16)
    got = cpu_quant.quant_matmul(x, blocks, Q4_1)
    assert got.dtype == torch.bfloat16 and quant_matmul(x, blocks, Q4_1).dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)


BAD = [
    ("unknown type", lambda: (torch.zeros(1, 32), torch.zeros(1, 34, dtype=torch.uint8), 1)),
    ("blocks not uint8", lambda: (torch.zeros(1, 32), torch.zeros(1, 34, dtype=torch.int8), Q8_0)),
    ("ragged block row", lambda: (torch.zeros(1, 32), torch.zeros(1, 35, dtype=torch.uint8), Q8_0)),
    ("1-D blocks", lambda: (torch.zeros(1, 32), torch.zeros(34, dtype=torch.uint8), Q8_0)),
    ("x too narrow", lambda: (torch.zeros(1, 31), torch.zeros(1, 34, dtype=torch.uint8), Q8_0)),
    ("x of one dim", lambda: (torch.zeros(32), torch.zeros(1, 34, dtype=torch.uint8), Q8_0)),
    ("integer x", lambda: (torch.zeros(1, 32, dtype=torch.int32), torch.zeros(1, 34, dtype=torch.uint8), Q8_0)),
]


@pytest.mark.parametrize("case", BAD, ids=[name for name, _ in BAD])
def test_bad_inputs_are_refused(case):
    x, blocks, qtype = case[1]()
    with pytest.raises(ValueError):
        quant_matmul(x, blocks, qtype)
    if cpu_quant.available(torch.zeros(1)):
        with pytest.raises(ValueError):
            cpu_quant.quant_matmul(x, blocks, qtype)


@needs_cc
def test_c_kernel_refuses_what_it_cannot_run():
    blocks = quantized(Q8_0, 4, 32)
    with pytest.raises(ValueError, match="status -3"):
        cpu_quant.run(torch.zeros(1, 32), blocks, Q8_0, isa=cpu_quant.best_isa() + 1)
    with pytest.raises(ValueError):
        cpu_quant.quant_matmul(torch.zeros(1, 32, dtype=torch.float64), blocks, Q8_0)
    with pytest.raises(ValueError):
        cpu_quant.quant_matmul(torch.zeros(1, 32), blocks.T.contiguous().T, Q8_0)  # block rows not contiguous


# F32: dense fp32 weights viewed as bytes (server/model/dense_cpu.py); the kernel only skips the dequantize


def f32_blocks(rows: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed))
    return w, w.view(torch.uint8)  # (rows, k) float32, (rows, 4k) uint8: the same memory


def test_f32_twin_is_a_view_of_the_weight():
    w, blocks = f32_blocks(5, 64)
    assert dequantize(blocks, F32).data_ptr() == w.data_ptr() and torch.equal(dequantize(blocks, F32), w)


@needs_cc
@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize("gemv_rows", [0, 64], ids=["tiled", "registers"])
def test_c_kernel_reads_f32_weights_exactly(isa, gemv_rows):
    w, blocks = f32_blocks(21, 576, seed=1)
    assert torch.equal(cpu_quant.run(torch.eye(576), blocks, F32, isa=isa, gemv_rows=gemv_rows).T, w)


@needs_cc
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("num_threads", [1, 2])
def test_c_kernel_f32_sweep(rows, shape, num_threads, threads):
    threads(num_threads)
    w, blocks = f32_blocks(*shape, seed=rows)
    x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(rows))
    for isa in (-1, *isas()):
        for gemv_rows in (0, cpu_quant.GEMV_MAX_ROWS, 64):
            assert_matmul_close(cpu_quant.run(x, blocks, F32, isa=isa, gemv_rows=gemv_rows), x, w)
    assert_matmul_close(ops.quant_matmul(x, blocks, F32), x, w)  # the C kernel or torch's GEMM, by rows


@needs_cc
def test_f32_dispatch_by_rows():
    x_few, x_many = torch.zeros(cpu_quant.F32_MAX_ROWS, 32), torch.zeros(cpu_quant.F32_MAX_ROWS + 1, 32)
    assert cpu_quant.serves(x_few, F32) and not cpu_quant.serves(x_many, F32)
    assert cpu_quant.serves(x_many, Q4_1)  # quantized weights have no dense GEMM to go back to


def bf16_blocks(rows: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
    return w.float(), w.view(torch.uint8)  # the exact widened values, (rows, 2k) uint8


@needs_cc
@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize("gemv_rows", [0, 64], ids=["tiled", "registers"])
def test_c_kernel_widens_bf16_weights_exactly(isa, gemv_rows):
    w, blocks = bf16_blocks(21, 576, seed=1)
    assert torch.equal(dequantize(blocks, BF16), w)
    assert torch.equal(cpu_quant.run(torch.eye(576), blocks, BF16, isa=isa, gemv_rows=gemv_rows).T, w)


@needs_cc
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_c_kernel_bf16_sweep(rows, shape, threads):
    threads(2)
    w, blocks = bf16_blocks(*shape, seed=rows)
    x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(rows))
    for isa in (-1, *isas()):
        for gemv_rows in (0, cpu_quant.GEMV_MAX_ROWS, 64):
            assert_matmul_close(cpu_quant.run(x, blocks, BF16, isa=isa, gemv_rows=gemv_rows), x, w)
    assert_matmul_close(ops.quant_matmul(x, blocks, BF16), x, w)
    assert_matmul_close(quant_matmul(x, blocks, BF16), x, w)
