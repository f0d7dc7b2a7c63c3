"""A wrapped projection serves DoRA, LoRA and base rows in one call, as PEFT's DoRA formula says, bias included:
DoRA row = m / ||W + s B A|| * (W x + s B A x) + bias."""

import torch
from torch import nn

from kernels.lora_batch import LoRABatchInfo
from server.adapters.formats import dora_scale
from server.model.batch import ForwardStep, LoRAStep
from server.model.lora import LoRALinear, base_weights


def test_dora_lora_and_base_rows_in_one_projection():
    torch.manual_seed(0)
    d_in, d_out, r = 12, 10, 3
    base = nn.Linear(d_in, d_out, bias=True)
    a0, b0, a1, b1 = torch.randn(r, d_in), torch.randn(d_out, r), torch.randn(r, d_in), torch.randn(d_out, r)
    mag = torch.rand(d_out) + 0.5
    s0, s1 = 0.7, 1.3
    scale = dora_scale(base.weight.detach(), a1, b1, mag, s1)
    pool = torch.cat([a0.reshape(-1), b0.reshape(-1), a1.reshape(-1), b1.reshape(-1), scale])
    offs = [0, a0.numel(), a0.numel() + b0.numel(), 2 * a0.numel() + b0.numel(), 2 * (a0.numel() + b0.numel())]
    a_off = torch.tensor([[[offs[0]]], [[offs[2]]]])  # (slots, L=1, M=1)
    b_off = torch.tensor([[[offs[1]]], [[offs[3]]]])
    scale_off = torch.tensor([[[-1]], [[offs[4]]]])  # slot 0 plain LoRA, slot 1 DoRA
    info = LoRABatchInfo.from_row_slots([0, 0, 1, -1, 1], [r, r], [s0, s1])
    step = ForwardStep(attention=None, lora=LoRAStep(info, a_off, b_off, pool, scale_off))  # type: ignore[arg-type]
    x = torch.randn(5, d_in)
    got = LoRALinear(base, 0, 0)(x, step)

    w = base.weight.detach()
    with torch.no_grad():
        lora = base(x[:2]) + s0 * x[:2] @ a0.T @ b0.T
        dora = scale * (x[[2, 4]] @ w.T + s1 * x[[2, 4]] @ a1.T @ b1.T) + base.bias
        torch.testing.assert_close(got[:2], lora)
        torch.testing.assert_close(got[[2, 4]], dora)
        torch.testing.assert_close(got[3], base(x[3]))


def test_base_weights_reads_through_the_wrapper():
    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = nn.Module()
            self.mlp = nn.Module()
            self.self_attn.q_proj = LoRALinear(nn.Linear(4, 6, bias=False), 0, 0)
            self.mlp.down_proj = nn.Linear(8, 4, bias=False)

    model = nn.Module()
    model.model = nn.Module()
    model.model.layers = nn.ModuleList([Layer()])
    read = base_weights(model)
    assert read(0, "q_proj") is not None and read(0, "q_proj").shape == (6, 4)
    assert torch.equal(read(0, "down_proj"), model.model.layers[0].mlp.down_proj.weight)
