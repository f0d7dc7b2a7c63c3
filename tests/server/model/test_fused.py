"""q/k/v and gate/up as one GEMM: every layer fused on CPU, parts read their rows of the one copy, idempotent.
(Numbers: the fp32, LoRA, DoRA and GGUF parity tests run on fused models.)"""

import torch

from server.model.fused import FusedProjections, fuse_projections
from server.model.quant import QuantLinear


def _inside(part: torch.Tensor, whole: torch.Tensor) -> bool:
    start, size = whole.data_ptr(), whole.numel() * whole.element_size()
    return start <= part.data_ptr() < start + size


def test_every_layer_is_fused_and_parts_share_the_fused_weights(fp32_model):
    from kernels.cpu.build import load

    if load("quant_matmul") is None:  # no C compiler: the dense nn.Linear path, nothing to fuse
        assert fuse_projections(fp32_model) == 0
        return
    for layer in fp32_model.model.layers:
        for fused, names in ((layer.self_attn.fused_qkv, ("q_proj", "k_proj", "v_proj")),
                             (layer.mlp.fused_gate_up, ("gate_proj", "up_proj"))):
            assert isinstance(fused, FusedProjections)
            block = layer.self_attn if names[0] == "q_proj" else layer.mlp
            for name in names:
                part = getattr(block, name)
                part = getattr(part, "base", part)
                assert isinstance(part, QuantLinear) and _inside(part.blocks, fused.base.blocks)
    assert fuse_projections(fp32_model) == 0  # already fused: nothing twice


def test_fused_output_is_the_parts_side_by_side():
    parts = [QuantLinear(torch.randn(n, 64).view(torch.uint8), 0, 64, torch.randn(n)) for n in (48, 16, 16)]
    x = torch.randn(3, 64)
    want = [p(x) for p in parts]
    fused = FusedProjections(parts)
    got = fused(x, None, tuple(parts))
    for g, w, p in zip(got, want, parts, strict=True):
        torch.testing.assert_close(g, w)
        torch.testing.assert_close(p(x), w)  # a part alone still serves, from its rows of the fused copy
