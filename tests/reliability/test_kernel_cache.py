"""The C kernels' build cache loads only what this user built: foreign, writable or corrupt files are rebuilt.

A planted .so runs a constructor that leaves a mark file when it is dlopened, so "refused" means it
never ran, not merely that something else was loaded afterwards. The rank limit lora.c enforces is
checked here too: the config refuses it up front and the wrapper raises rather than asserts.
"""

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from kernels.cpu import lora as cpu_lora
from kernels.cpu.build import cached_path, load
from kernels.limits import MAX_LORA_RANK
from kernels.lora_batch import LoRABatchInfo
from kernels.torch.lora import lora_apply as twin_apply
from server.config import EngineConfig

needs_cc = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
LORA_C = Path(cpu_lora.__file__).with_name("lora.c")

PLANTED_C = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void) {
    const char *mark = getenv("PLANTED_SO_MARK");
    if (mark) close(open(mark, O_CREAT | O_WRONLY, 0600));
}
"""

# Writes garbage wherever it is told to put its output: every build "succeeds" and never loads.
BROKEN_CC = """#!/bin/sh
echo run >> "$0.calls"
while [ $# -gt 0 ]; do
    if [ "$1" = -o ]; then printf 'not an ELF file' > "$2"; fi
    shift
done
"""


@pytest.fixture
def cache(tmp_path, monkeypatch, caplog) -> Path:
    """A private cache root through LORAPLEX_CACHE_DIR, and load() forgetting what it loaded before."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LORAPLEX_CACHE_DIR", str(root))
    monkeypatch.delenv("LORAPLEX_KERNELS", raising=False)
    caplog.set_level(logging.WARNING, logger="kernels.cpu.build")
    load.cache_clear()
    yield root
    load.cache_clear()


@pytest.fixture
def planted(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(a .so that marks its loading, the mark file), the .so sitting at load('lora')'s cached path."""
    src, mark = tmp_path / "planted.c", tmp_path / "planted-was-loaded"
    src.write_text(PLANTED_C)
    monkeypatch.setenv("PLANTED_SO_MARK", str(mark))
    target = cached_path("lora")
    target.parent.mkdir(mode=0o700, parents=True)
    cc = shutil.which(os.environ.get("CC", "cc"))
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(target), str(src)], check=True)
    return target, mark


def _warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _assert_computes_like_the_twin() -> None:
    gen = torch.Generator().manual_seed(0)
    d_in, d_out, ranks = 64, 48, [4, 8]
    a_sizes, b_sizes = [r * d_in for r in ranks], [d_out * r for r in ranks]
    pool = torch.randn(sum(a_sizes) + sum(b_sizes), generator=gen)  # (N,)
    a_off = torch.tensor([0, a_sizes[0]])
    b_off = torch.tensor([sum(a_sizes), sum(a_sizes) + b_sizes[0]])
    info = LoRABatchInfo.from_row_slots([0, 1, -1, 0, 1], ranks, [0.5, 2.0])
    x = torch.randn(5, d_in, generator=gen)  # (T, in)
    out, expected = torch.zeros(5, d_out), torch.zeros(5, d_out)  # (T, out)
    assert cpu_lora.available(x)
    cpu_lora.lora_apply(x, out, pool, a_off, b_off, info)
    twin_apply(x, expected, pool, a_off, b_off, info)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@needs_cc
def test_a_so_owned_by_another_user_is_rebuilt_not_loaded(cache, planted, caplog):
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    target, mark = planted
    os.chown(target, 65534, 65534)
    assert load("lora") is not None
    assert not mark.exists(), "the foreign .so was loaded"
    assert target.stat().st_uid == os.geteuid()
    assert _warnings(caplog, "owned by uid 65534")


@needs_cc
def test_a_world_writable_so_is_rebuilt_not_loaded(cache, planted, caplog):
    target, mark = planted
    target.chmod(0o777)
    assert load("lora") is not None
    assert not mark.exists(), "the world-writable .so was loaded"
    assert target.stat().st_mode & 0o022 == 0
    assert _warnings(caplog, "group- or world-writable")


@needs_cc
@pytest.mark.parametrize("which, mode", [("cache", 0o777), ("kernels", 0o775)])
def test_a_writable_cache_dir_is_not_used(cache, planted, caplog, which, mode):
    target, mark = planted
    directory = cache if which == "cache" else target.parent
    directory.chmod(mode)
    lib = load("lora")
    assert lib is not None, "no private build"
    assert not mark.exists(), "a .so from a writable dir was loaded"
    assert not lib._name.startswith(str(cache)), lib._name
    assert _warnings(caplog, f"{directory} is group- or world-writable")
    _assert_computes_like_the_twin()


@needs_cc
def test_cache_dirs_are_created_private(cache):
    assert load("lora") is not None
    for directory in (cache, cache / "kernels"):
        assert directory.stat().st_mode & 0o777 == 0o700


@needs_cc
def test_a_corrupt_so_is_rebuilt_once_and_computes(cache, caplog):
    target = cached_path("lora")
    target.parent.mkdir(mode=0o700, parents=True)
    target.write_bytes(b"\x7fELF" + os.urandom(4096))
    lib = load("lora")
    assert lib is not None and lib._name == str(target)
    assert len(_warnings(caplog, "failed to load")) == 1
    _assert_computes_like_the_twin()


def test_a_so_that_keeps_failing_gives_the_torch_twin(cache, tmp_path, monkeypatch, caplog):
    cc = tmp_path / "broken-cc"
    cc.write_text(BROKEN_CC)
    cc.chmod(0o700)
    monkeypatch.setenv("CC", str(cc))
    assert load("lora") is None
    assert not cpu_lora.available(torch.zeros(1))
    assert len(_warnings(caplog, "failed to load")) == 2
    assert len((tmp_path / "broken-cc.calls").read_text().split()) == 4, "not exactly two builds (compile + link)"
    assert not cached_path("lora").exists()


def test_the_rank_limit_matches_lora_c():
    assert re.search(r"#define MAX_RANK (\d+)", LORA_C.read_text()).group(1) == str(MAX_LORA_RANK)


def test_config_refuses_a_rank_the_cpu_kernel_cannot_run():
    EngineConfig(max_lora_rank=MAX_LORA_RANK)
    with pytest.raises(ValueError, match=rf"--max-lora-rank.*{MAX_LORA_RANK}"):
        EngineConfig(max_lora_rank=MAX_LORA_RANK + 1)


@needs_cc
def test_the_cpu_kernel_raises_on_a_rank_above_its_limit():
    r, d = MAX_LORA_RANK + 1, 8
    pool = torch.zeros(2 * r * d)
    info = LoRABatchInfo.from_row_slots([0], [r], [1.0])
    with pytest.raises(ValueError, match="rank"):
        cpu_lora.lora_apply(torch.zeros(1, d), torch.zeros(1, d), pool, torch.tensor([0]), torch.tensor([r * d]), info)
