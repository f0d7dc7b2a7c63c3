"""DoRA rescale out[t] *= scale_s (out,), the scale read from the unified pool at its slot's offset.

One program per (row, tile of output features): a row finds its slot, the slot its scale vector
(m / ||W + s B A|| per output channel, stored at page-in); base-only rows and slots without a scale
return at once, so DoRA rows share the step with LoRA and base rows.
"""

import torch
import triton
import triton.language as tl

from kernels.lora_batch import LoRABatchInfo

_BLOCK_N = 128  # output features per program


@triton.jit
def _dora_rescale_kernel(
    out_ptr,
    pool_ptr,
    scale_offsets_ptr,
    row_slots_ptr,
    d_out,
    stride_ot,
    stride_off,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(row_slots_ptr + row)
    if slot < 0:
        return
    off = tl.load(scale_offsets_ptr + slot * stride_off)
    if off < 0:
        return
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    mask = n < d_out
    o = out_ptr + row * stride_ot + n
    scale = tl.load(pool_ptr + off + n, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_N,)
    total = tl.load(o, mask=mask, other=0.0).to(tl.float32) * scale
    tl.store(o, total.to(out_ptr.dtype.element_ty), mask=mask)


def dora_rescale_fwd(
    out: torch.Tensor,  # (T, out), rescaled in place
    pool: torch.Tensor,  # (N,) flat unified pool, out's dtype
    scale_offsets: torch.Tensor,  # (num_slots,) int64, may be strided; < 0 = no rescale
    info: LoRABatchInfo,
) -> None:
    assert pool.dim() == 1 and pool.stride(0) == 1 and pool.dtype == out.dtype
    assert out.dim() == 2 and out.stride(1) == 1 and out.shape[0] == info.num_rows
    assert scale_offsets.dtype == torch.int64 and scale_offsets.dim() == 1
    assert out.device == pool.device == scale_offsets.device == info.row_slots.device
    assert info.entry_rows is None, "a DoRA rescale applies to token rows, not mixture entries"
    T, d_out = out.shape
    if T == 0:
        return
    grid = (T, triton.cdiv(d_out, _BLOCK_N))
    _dora_rescale_kernel[grid](
        out, pool, scale_offsets, info.row_slots, d_out, out.stride(0), scale_offsets.stride(0), BLOCK_N=_BLOCK_N
    )
