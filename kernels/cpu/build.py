"""Compile a C kernel of this folder once per host and load it with ctypes; None when no compiler.

The shared object is cached under the loraplex cache dir, keyed by the source (headers included),
the flags and the CPU's feature flags (it is built with -march=native), so a restart loads it at
once and an image moved to another CPU rebuilds instead of faulting on an unknown instruction.
"""

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from server.config import default_cache_dir

log = logging.getLogger(__name__)

# Reassociation lets the compiler vectorise the dot products; NaN and inf keep their meaning.
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]
# -fopenmp links libgomp.so.1, which resolves to the copy torch has already loaded: one thread pool.
EXTRA_FLAGS = {"paged_attention": ["-fopenmp", "-ffast-math"], "lora": ["-fopenmp"]}
# Linked without -ffast-math: gcc < 13 would add crtfastmath.o to the .so, whose constructor turns on
# flush-to-zero for the whole process when it loads (subnormals vanish everywhere, not just here).
LINK_FLAGS = ["-shared", "-fopenmp"]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def ptr(t) -> ctypes.c_void_p:
    """A tensor's data pointer for a ctypes call (the caller has checked dtype and layout)."""
    return ctypes.c_void_p(t.data_ptr())


@cache
def load(name: str) -> ctypes.CDLL | None:
    """kernels/cpu/<name>.c as a loaded library, built on first use; None (logged) if it cannot be."""
    if os.environ.get("LORAPLEX_KERNELS") == "torch":
        return None
    src = Path(__file__).with_name(f"{name}.c")
    compiler = shutil.which(os.environ.get("CC", "cc"))
    flags = [*CFLAGS, *EXTRA_FLAGS.get(name, []), "-fPIC"]
    headers = [h.read_bytes() for h in sorted(src.parent.glob("*.h"))]
    facts = [
        src.read_bytes(),
        *headers,
        " ".join(flags + LINK_FLAGS).encode(),
        platform.machine().encode(),
        _cpu_flags().encode(),
    ]
    key = hashlib.sha256(b"\0".join([*facts, str(compiler).encode()])).hexdigest()[:16]
    target = default_cache_dir() / "kernels" / f"{name}-{key}.so"
    if not target.exists():
        if compiler is None:
            log.warning("no C compiler (cc): %s falls back to its torch twin", src.name)
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            obj, so = Path(tmp) / f"{name}.o", Path(tmp) / target.name
            for cmd in (
                [compiler, *flags, "-c", "-o", str(obj), str(src)],
                [compiler, *LINK_FLAGS, "-o", str(so), str(obj), "-lm"],
            ):
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode != 0:
                    log.warning("building %s failed, using the torch twin: %s", src.name, run.stderr.strip()[-2000:])
                    return None
            os.replace(so, target)  # atomic: concurrent starts never load a half-written file
    return ctypes.CDLL(str(target))
