"""Loading the C kernels leaves the process's floating point alone (no flush-to-zero from -ffast-math)."""

import subprocess
import sys

import pytest

from kernels.cpu.build import load


@pytest.mark.parametrize("name", ["lora", "paged_attention"])
def test_loading_a_kernel_keeps_subnormals(name):
    # A fresh process: this one may already have loaded the kernels (or something else that set FTZ).
    code = (
        "import torch; from kernels.cpu.build import load; "
        f"lib = load({name!r}); assert lib is not None, 'no compiler'; "
        "tiny = 5e-324; assert tiny * 1.0 != 0.0, 'subnormals flushed to zero'; "
        "assert torch.tensor(1e-40).mul(1.0).item() != 0.0, 'torch subnormals flushed'"
    )
    if load(name) is None:
        pytest.skip("no C compiler: the CPU kernels are off")
    subprocess.run([sys.executable, "-c", code], check=True)
