"""The one place that picks a kernel: Triton on CUDA; on CPUs the C kernels (kernels/cpu) if built, else the twin."""

import importlib
import os
from functools import cache

import torch

from kernels import torch as torch_ops

_FORCE_TORCH = os.environ.get("LORAPLEX_KERNELS") == "torch"


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda and not _FORCE_TORCH


@cache
def _cpu_module(name: str):
    """kernels.cpu.<name>, imported on first use (the hot paths call here per projection)."""
    return importlib.import_module(f"kernels.cpu.{name}")


def _cpu_elementwise(x: torch.Tensor):
    """kernels/cpu/elementwise when it serves x (CPU, fp32, built), else None."""
    if _FORCE_TORCH or x.device.type != "cpu":
        return None
    elementwise = _cpu_module("elementwise")
    return elementwise if elementwise.available(x) else None


def store_kv(k, v, k_cache, v_cache, slot_mapping) -> None:
    if _use_triton(k):
        from kernels.triton.kv_store import store_kv_fwd

        return store_kv_fwd(k, v, k_cache, v_cache, slot_mapping)
    if (cpu := _cpu_elementwise(k)) is not None:
        return cpu.store_kv(k, v, k_cache, v_cache, slot_mapping)
    return torch_ops.store_kv(k, v, k_cache, v_cache, slot_mapping)


def add_rms_norm(x, res, weight, eps):
    """(x += res in place, when given) then weight * x / rms(x): (T, D) -> (T, D)."""
    if x.dim() == 2 and (cpu := _cpu_elementwise(x)) is not None:
        return cpu.add_rms_norm(x, res, weight, eps)
    from kernels.torch.rms_norm import add_rms_norm as twin

    return twin(x, res, weight, eps)


def silu_mul(gate, up):
    """silu(gate) * up: (T, I) each -> (T, I)."""
    if gate.dim() == 2 and (cpu := _cpu_elementwise(gate)) is not None:
        return cpu.silu_mul(gate, up)
    from kernels.torch.silu_mul import silu_mul as twin

    return twin(gate, up)


def rotary_(q, k, cos, sin) -> None:
    """q (T, H, hd) and k (T, KH, hd) rotated in place by cos/sin (T, hd)."""
    if (cpu := _cpu_elementwise(q)) is not None:
        return cpu.rotary_(q, k, cos, sin)
    from kernels.torch.rotary import rotary_ as twin

    return twin(q, k, cos, sin)


def paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale):
    if _use_triton(q):
        from kernels.triton.paged_attention import paged_attention_decode_fwd

        return paged_attention_decode_fwd(q, k_cache, v_cache, block_tables, context_lens, scale)
    from kernels.cpu import paged_attention as cpu_attention

    if not _FORCE_TORCH and cpu_attention.available(q):
        return cpu_attention.paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale)
    return torch_ops.paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale)


def paged_attention_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale):
    if _use_triton(q):
        from kernels.triton.paged_attention import paged_attention_prefill_fwd

        return paged_attention_prefill_fwd(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale)
    from kernels.cpu import paged_attention as cpu_attention

    if not _FORCE_TORCH and cpu_attention.available(q):
        return cpu_attention.paged_attention_prefill(
            q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale
        )
    return torch_ops.paged_attention_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale)


def lora_shrink(x, pool, a_offsets, info):
    if _use_triton(x):
        from kernels.triton.lora_shrink import bgmv_shrink_fwd, sgmv_shrink_fwd

        shrink = bgmv_shrink_fwd if info.decode_only else sgmv_shrink_fwd
        return shrink(x, pool, a_offsets, info)
    from kernels.torch.lora import lora_shrink as shrink_twin

    return shrink_twin(x, pool, a_offsets, info)


def lora_expand(y, out, pool, b_offsets, info) -> None:
    if _use_triton(y):
        from kernels.triton.lora_expand import bgmv_expand_fwd, sgmv_expand_fwd

        expand = bgmv_expand_fwd if info.decode_only else sgmv_expand_fwd
        return expand(y, out, pool, b_offsets, info)
    from kernels.torch.lora import lora_expand as expand_twin

    return expand_twin(y, out, pool, b_offsets, info)


def lora_apply(x, out, pool, a_offsets, b_offsets, info) -> None:
    """out (T, out) += the LoRA delta of every row of x (T, in), whatever adapter(s) each row has."""
    if info.entry_rows is not None:
        return apply_per_entry(_lora_apply_rows, x, out, pool, a_offsets, b_offsets, info)
    return _lora_apply_rows(x, out, pool, a_offsets, b_offsets, info)


def apply_per_entry(apply, x, out, pool, a_offsets, b_offsets, info) -> None:
    """Mixture rows: `apply` runs the (row, slot) entries as plain rows; each row sums its entries' deltas."""
    rows = info.entry_rows  # (E,)
    delta = out.new_zeros(rows.shape[0], out.shape[1])  # (E, out)
    apply(x.index_select(0, rows), delta, pool, a_offsets, b_offsets, info)
    out.index_add_(0, rows, delta)


def _lora_apply_rows(x, out, pool, a_offsets, b_offsets, info) -> None:
    if _use_triton(x):
        return lora_expand(lora_shrink(x, pool, a_offsets, info), out, pool, b_offsets, info)
    from kernels.cpu import lora as cpu_lora

    if not _FORCE_TORCH and cpu_lora.available(x):
        return cpu_lora.lora_apply(x, out, pool, a_offsets, b_offsets, info)
    from kernels.torch.lora import lora_apply as apply_twin  # fuses shrink and expand per adapter

    return apply_twin(x, out, pool, a_offsets, b_offsets, info)


def arrow_apply(x, out, pool, a_offsets, b_offsets, proto_offsets, arrow) -> None:
    """out (T, out) += per-token Arrow's delta for the routed rows (kernels/arrow_rows.py ArrowRows): each row
    mixes its top-k candidates at this projection, weighted by softmax(|x . prototype| / temperature)."""
    info = arrow.entries
    if _use_triton(x):
        from kernels.triton.arrow_expand import arrow_expand_fwd

        y = lora_shrink(x.index_select(0, info.entry_rows), pool, a_offsets, info)  # (E, max_rank)
        return arrow_expand_fwd(x, y, out, pool, b_offsets, proto_offsets, arrow)
    from kernels.cpu import arrow as cpu_arrow
    from kernels.torch.arrow import arrow_apply as arrow_twin

    if not _FORCE_TORCH and cpu_arrow.available(x):  # one C call: the weights, then only the chosen deltas
        return cpu_arrow.arrow_apply(x, out, pool, a_offsets, b_offsets, proto_offsets, arrow)
    return arrow_twin(x, out, pool, a_offsets, b_offsets, proto_offsets, arrow, _lora_apply_rows)


def quant_matmul(x, blocks, qtype):
    """x (T, in) @ dequant(blocks)^T -> (T, out) in x's dtype; blocks (out, in/32 * block bytes) uint8 of
    ggml type qtype (Q8_0/Q4_0/Q4_1, or F32: dense weights as bytes). The C kernel on CPUs, else the twin
    (dequantize + F.linear; for F32 a view, so torch's GEMM on the weight itself)."""
    cpu_quant = _cpu_module("quant_matmul")
    if not _FORCE_TORCH and cpu_quant.available(x) and cpu_quant.serves(x, qtype):
        return cpu_quant.quant_matmul(x, blocks, qtype)
    from kernels.torch.quant_matmul import quant_matmul as twin

    return twin(x, blocks, qtype)


def dora_rescale(out, pool, scale_offsets, info) -> None:
    """out (T, out) *= each DoRA row's per-channel scale (m / ||W + s B A||, in the pool); other rows untouched."""
    if _use_triton(out):
        from kernels.triton.dora_rescale import dora_rescale_fwd

        return dora_rescale_fwd(out, pool, scale_offsets, info)
    from kernels.cpu import dora as cpu_dora

    if not _FORCE_TORCH and cpu_dora.available(out):
        return cpu_dora.dora_rescale(out, pool, scale_offsets, info)
    from kernels.torch.dora import dora_rescale as twin

    return twin(out, pool, scale_offsets, info)
