"""Compile a C kernel of this folder once per host and load it with ctypes; None when it cannot be.

The shared object is cached under the loraplex cache dir, keyed by the source (headers included),
the flags and the CPU's feature flags (it is built with -march=native), so a restart loads it at
once and an image moved to another CPU rebuilds instead of faulting on an unknown instruction.

Loading a .so runs its code, so a cached one is loaded only if no other user could have written it:
the file is ours and writable by us alone, and the kernels dir and the cache dir above it are ours
(or root's) and writable by their owner alone. Otherwise the kernel is built afresh in a private
temporary dir. A cached file that fails to load (truncated, corrupt) is rebuilt once; after that,
or without a compiler, the torch twin serves.
"""

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from kernels.cache_dir import default_cache_dir

log = logging.getLogger(__name__)

# Reassociation lets the compiler vectorise the dot products; NaN and inf keep their meaning.
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]
# -fopenmp links libgomp.so.1, which resolves to the copy torch has already loaded: one thread pool.
EXTRA_FLAGS = {
    "paged_attention": ["-fopenmp", "-ffast-math"],
    "lora": ["-fopenmp"],
    "arrow": ["-fopenmp"],
    # No contraction: d*q + m must round twice, as gguf's dequantize does; the dot products write their FMAs.
    "quant_matmul": ["-fopenmp", "-ffp-contract=off"],
    # No contraction: rotary's products round as torch's do (bit for bit the twin).
    "elementwise": ["-fopenmp", "-ffp-contract=off"],
}
# Linked without -ffast-math: gcc < 13 would add crtfastmath.o to the .so, whose constructor turns on
# flush-to-zero for the whole process when it loads (subnormals vanish everywhere, not just here).
LINK_FLAGS = ["-shared", "-fopenmp"]
WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def ptr(t) -> ctypes.c_void_p:
    """A tensor's data pointer for a ctypes call (the caller has checked dtype and layout)."""
    return ctypes.c_void_p(t.data_ptr())


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def _compile_flags(name: str) -> list[str]:
    return [*CFLAGS, *EXTRA_FLAGS.get(name, []), "-fPIC"]


def cached_path(name: str) -> Path:
    """Where load(name) caches the build of this source, with these flags and compiler, for this CPU."""
    src = Path(__file__).with_name(f"{name}.c")
    facts = [
        src.read_bytes(),
        *(h.read_bytes() for h in sorted(src.parent.glob("*.h"))),
        " ".join(_compile_flags(name) + LINK_FLAGS).encode(),
        platform.machine().encode(),
        _cpu_flags().encode(),
        str(_compiler()).encode(),
    ]
    key = hashlib.sha256(b"\0".join(facts)).hexdigest()[:16]
    return default_cache_dir() / "kernels" / f"{name}-{key}.so"


def _dir_problem(directory: Path) -> str | None:
    """Why another user could swap files in directory; None when only we (or root) can."""
    st = directory.stat()  # a symlinked cache dir is judged by where it points
    if st.st_uid not in (os.geteuid(), 0):
        return f"{directory} is owned by uid {st.st_uid}"
    if st.st_mode & WRITABLE_BY_OTHERS:
        return f"{directory} is group- or world-writable (chmod go-w fixes it)"
    return None


def _ensure_private_dirs(kernels_dir: Path) -> str | None:
    """Create the cache dir and its kernels dir (0o700) where missing; why they are unsafe, or None."""
    for directory in (kernels_dir.parent, kernels_dir):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if problem := _dir_problem(directory):
            return problem
    return None


def _file_problem(path: Path) -> str | None:
    """Why path may hold another user's code; None when it is our own regular file, writable by us alone."""
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid != os.geteuid():
        return f"{path} is owned by uid {st.st_uid}, not by this process's uid {os.geteuid()}"
    if st.st_mode & WRITABLE_BY_OTHERS:
        return f"{path} is group- or world-writable"
    return None


def _build(name: str, target: Path) -> bool:
    """Compile kernels/cpu/<name>.c into target (atomically); False, logged, without a compiler or on errors."""
    src, compiler, flags = Path(__file__).with_name(f"{name}.c"), _compiler(), _compile_flags(name)
    if compiler is None:
        log.warning("no C compiler (cc): %s falls back to its torch twin", src.name)
        return False
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, so = Path(tmp) / f"{name}.o", Path(tmp) / target.name
        for cmd in (
            [compiler, *flags, "-c", "-o", str(obj), str(src)],
            [compiler, *LINK_FLAGS, "-o", str(so), str(obj), "-lm"],
        ):
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                log.warning("building %s failed, using the torch twin: %s", src.name, run.stderr.strip()[-2000:])
                return False
        os.replace(so, target)  # atomic: concurrent starts never load a half-written file
    return True


def _load_cached(name: str, target: Path) -> ctypes.CDLL | None:
    for attempt in range(2):
        if os.path.lexists(target) and (problem := _file_problem(target)):
            log.warning("refusing to load %s: rebuilding it", problem)
            target.unlink()
        if not os.path.lexists(target) and not _build(name, target):
            return None
        try:
            return ctypes.CDLL(str(target))
        except OSError as e:  # truncated or corrupt: from a full disk or a crash mid-copy
            target.unlink(missing_ok=True)
            then = "rebuilding it" if attempt == 0 else f"{name} falls back to its torch twin"
            log.warning("kernel %s failed to load (%s): removed it, %s", target, e, then)
    return None


def _load_private(name: str) -> ctypes.CDLL | None:
    """Built in a fresh dir only this process's user can write; removed once loaded (the mapping stays)."""
    try:
        with tempfile.TemporaryDirectory(prefix="loraplex-kernels-") as tmp:
            so = Path(tmp) / f"{name}.so"
            return ctypes.CDLL(str(so)) if _build(name, so) else None
    except OSError as e:
        log.warning("building %s privately failed (%s): it falls back to its torch twin", name, e)
        return None


@cache
def load(name: str) -> ctypes.CDLL | None:
    """kernels/cpu/<name>.c as a loaded library, built on first use; None (logged) if it cannot be."""
    if os.environ.get("LORAPLEX_KERNELS") == "torch":
        return None
    target = cached_path(name)
    try:
        problem = _ensure_private_dirs(target.parent)
    except OSError as e:
        problem = f"cannot create {target.parent}: {e}"
    if problem:
        log.warning("not using the kernel cache, %s: building %s in a private temporary dir", problem, name)
        return _load_private(name)
    return _load_cached(name, target)


_ARG_TYPES = {"p": ctypes.c_void_p, "i": ctypes.c_int64, "f": ctypes.c_float}


@cache
def bind(name: str, symbol: str, signature: str):
    """kernels/cpu/<name>.c's `int symbol(...)` with its arguments declared ("p" pointer, "i" int64, "f" float),
    or None when the library cannot be built. ctypes then converts plain ints and floats itself: a decode step
    makes ~200 of these calls, and wrapping every argument in a ctypes object cost more than some kernels."""
    lib = load(name)
    if lib is None:
        return None
    fn = ctypes.CFUNCTYPE(ctypes.c_int, *(_ARG_TYPES[c] for c in signature))((symbol, lib))
    return fn
