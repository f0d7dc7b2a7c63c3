"""Converting the default GGUF model into the cache: concurrent starts take turns, leftovers are replaced.

Each test converts the real default model (SmolLM2-135M-Instruct, ~20 s) into a fresh cache root.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from server.model.loader import COMPLETE_MARKER, _gguf_cache_dir, default_model_path, resolve_checkpoint

REPO = Path(__file__).resolve().parents[2]
CONVERT = (
    "import sys; from pathlib import Path; from server.model.loader import resolve_checkpoint; "
    "print(resolve_checkpoint(None, Path(sys.argv[1])).converted)"
)

pytestmark = pytest.mark.slow


def assert_one_complete_entry(root: Path) -> Path:
    """The cache's models dir holds one converted model and its lock file: no tmp dirs, no half copies."""
    models = root / "models"
    dirs = [p for p in models.iterdir() if p.is_dir()]
    assert [p.name for p in dirs] == [_gguf_cache_dir(default_model_path(), root).name], sorted(models.iterdir())
    out = dirs[0]
    assert (out / COMPLETE_MARKER).is_file() and (out / "config.json").is_file()
    assert (out / "model.safetensors").stat().st_size > 100 * 2**20
    return out


def test_two_processes_converting_at_once_share_one_result(tmp_path):
    root = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONVERT, str(root)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, "\n".join(err.splitlines()[-8:])
    assert sorted(out.strip() for out, _ in results) == ["False", "True"], "not exactly one conversion"
    assert_one_complete_entry(root)


def test_leftovers_of_a_killed_conversion_are_replaced(tmp_path):
    root = tmp_path / "cache"
    out = _gguf_cache_dir(default_model_path(), root)
    out.parent.mkdir(parents=True)
    tmp = out.with_name(out.name + ".tmp99999")  # a conversion killed while saving
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"\0" * 1024)
    out.mkdir()  # a half copy without the marker: config present, weights truncated
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"\0" * 1024)
    ckpt = resolve_checkpoint(None, root)
    assert ckpt.converted and ckpt.directory == out
    assert ckpt.config.model_type == "llama"
    assert_one_complete_entry(root)
