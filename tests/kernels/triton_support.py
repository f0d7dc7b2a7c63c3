"""Where the Triton kernel tests run: under the interpreter on CPU tensors, unless TRITON_INTERPRET=0 on CUDA.

Import this before anything imports triton: the interpreter flag is read when kernels are decorated.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

INTERPRET = os.environ["TRITON_INTERPRET"] == "1"
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"


def triton_skip(import_error: ImportError | None):
    """A skip mark for the Triton cases when triton is missing or there is nowhere to run it."""
    reason = (
        f"triton unavailable: {import_error}"
        if import_error is not None
        else ("TRITON_INTERPRET=0 needs CUDA" if DEVICE == "cpu" and not INTERPRET else None)
    )
    return pytest.mark.skipif(reason is not None, reason=str(reason))
