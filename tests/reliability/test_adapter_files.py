# ruff: noqa: F811 (the fixtures imported from tests/server/adapters/conftest.py)
"""An adapter folder cannot reach outside its allowed root, grow without bound, or change under its name.

Registration reads every file once, through one directory descriptor, without following a symlink out
of the root, and records a digest; a later read of the weights must find the same bytes.
"""

import os
import shutil

import pytest
import torch

from server.adapters.adapter_config import CONFIG_FILE, WEIGHTS_FILE
from server.adapters.files import MAX_JSON_BYTES
from server.adapters.metadata import METADATA_FILE
from server.adapters.registry import AdapterRegistry
from server.adapters.types import AdapterError
from tests.server.adapters.conftest import bank, make_adapter, tiny_config  # noqa: F401 (fixtures)
from tests.server.adapters.helpers import patch_config, patch_tensors

Q0A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.fixture
def root(tmp_path):
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


@pytest.fixture
def outside(tmp_path):
    (tmp_path / "outside").mkdir()
    return tmp_path / "outside"


def refused(registry, name, path, *words, root=None):
    with pytest.raises(AdapterError) as err:
        registry.register(name, path, **({"root": root} if root else {}))
    for word in (repr(name), *words):
        assert word in str(err.value), str(err.value)
    assert name not in registry and registry.host_cache.stats.entries == 0
    return str(err.value)


@pytest.mark.parametrize("filename", [CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE])
def test_a_file_symlinked_out_of_the_root_is_refused(tiny_config, make_adapter, root, outside, filename):
    path = make_adapter("a", root=root)
    target = outside / filename
    if filename == METADATA_FILE:
        target.write_text('{"examples": ["secret"]}')
    else:
        shutil.move(path / filename, target)
    (path / filename).symlink_to(target)
    registry = AdapterRegistry(tiny_config)
    refused(registry, "a", path, filename, "outside the allowed adapter root", root=root)
    assert registry.register("a", path).name == "a"  # an operator's own path (no root) may link anywhere


@pytest.mark.parametrize("where", ["final", "parent"])
def test_a_directory_symlinked_out_of_the_root_is_refused(tiny_config, make_adapter, root, outside, where):
    make_adapter("a", root=outside)
    if where == "final":
        (root / "link").symlink_to(outside / "a")
        path = root / "link"
    else:
        (root / "sub").symlink_to(outside)
        path = root / "sub" / "a"
    refused(AdapterRegistry(tiny_config), "a", path, "outside the allowed adapter root", root=root)


def test_symlinks_that_stay_inside_the_root_are_followed(tiny_config, make_adapter, root):
    """A Hugging Face cache: snapshot files link to blobs elsewhere under the same root."""
    path = make_adapter("snapshot", root=root / "snapshots")
    (root / "blobs").mkdir()
    for filename in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.move(path / filename, root / "blobs" / filename)
        (path / filename).symlink_to(os.path.relpath(root / "blobs" / filename, path))
    ref = AdapterRegistry(tiny_config).register("a", path, root=root)
    assert ref.root == root and ref.digest


@pytest.mark.timeout(10)
@pytest.mark.parametrize("filename", [CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE])
def test_a_fifo_is_refused_without_waiting_for_a_writer(tiny_config, make_adapter, filename):
    path = make_adapter()
    (path / filename).unlink(missing_ok=True)
    os.mkfifo(path / filename)
    refused(AdapterRegistry(tiny_config), "a", path, filename, "not a regular file")


@pytest.mark.parametrize("filename", [CONFIG_FILE, METADATA_FILE])
def test_oversized_json_is_refused(tiny_config, make_adapter, filename):
    path = make_adapter()
    if filename == CONFIG_FILE:
        patch_config(path, base_model_name_or_path="x" * MAX_JSON_BYTES)  # valid JSON, just too big
    else:
        (path / filename).write_text('{"examples": ["' + "x" * MAX_JSON_BYTES + '"]}')
    refused(AdapterRegistry(tiny_config), "a", path, filename, f"more than the {MAX_JSON_BYTES} allowed")


def test_weights_larger_than_the_config_explains_are_refused_unread(tiny_config, make_adapter):
    path = make_adapter(rank=2)
    with open(path / WEIGHTS_FILE, "ab") as f:
        f.truncate(64 << 20)  # sparse: a huge file costs no disk
    refused(AdapterRegistry(tiny_config), "a", path, WEIGHTS_FILE, "allowed")


@pytest.mark.parametrize("case", ["deep_json", "config_dir", "weights_dir", "not_utf8", "huge_int"])
def test_unreadable_content_is_an_adapter_error(tiny_config, make_adapter, case):
    path = make_adapter()
    if case == "deep_json":
        (path / CONFIG_FILE).write_text("[" * 100_000 + "]" * 100_000)
    elif case == "not_utf8":
        (path / CONFIG_FILE).write_bytes(b'{"r": "\xff\xfe"}')
    elif case == "huge_int":
        (path / CONFIG_FILE).write_text('{"peft_type": "LORA", "r": ' + "9" * 10_000 + "}")
    else:
        target = path / (CONFIG_FILE if case == "config_dir" else WEIGHTS_FILE)
        target.unlink()
        target.mkdir()
    refused(AdapterRegistry(tiny_config), "a", path)


def test_weights_truncated_after_registration_are_refused_cleanly(tiny_config, make_adapter):
    registry = AdapterRegistry(tiny_config)
    ref = registry.register("a", make_adapter())
    served = registry.weights(ref)
    size = (ref.path / WEIGHTS_FILE).stat().st_size
    os.truncate(ref.path / WEIGHTS_FILE, size // 2)
    assert registry.weights(ref) is served  # held in memory: never read back from the file, never mapped
    registry.host_cache.discard(ref.id)
    with pytest.raises(AdapterError, match="'a': adapter_model.safetensors changed on disk since it was registered"):
        registry.weights(ref)


def test_a_swapped_directory_is_never_served_under_the_old_name(tiny_config, make_adapter, root, outside):
    registry = AdapterRegistry(tiny_config)
    path = make_adapter("a", root=root)
    ref = registry.register("a", path, root=root)
    before = registry.weights(ref).a[(0, "q_proj")].clone()
    registry.host_cache.discard(ref.id)

    os.rename(path, root / "old")
    make_adapter("a", root=root)  # same shapes, other values: the file alone must tell
    with pytest.raises(AdapterError, match="changed on disk since it was registered"):
        registry.weights(ref)

    shutil.rmtree(path)
    path.symlink_to(outside)  # and a swap that leads outside the root is refused before any read
    shutil.copytree(root / "old", outside, dirs_exist_ok=True)
    with pytest.raises(AdapterError, match="outside the allowed adapter root"):
        registry.weights(ref)

    path.unlink()
    os.rename(root / "old", path)  # the registered bytes again: served again
    assert torch.equal(registry.weights(ref).a[(0, "q_proj")], before)


def test_the_digest_is_the_adapters_content(tiny_config, make_adapter, tmp_path):
    registry = AdapterRegistry(tiny_config)
    path = make_adapter("a")
    first = registry.register("a", path)
    assert len(first.digest) == 64 and registry.register("b", path).digest == first.digest
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    patch_config(copy, lora_alpha=32)  # same weights, other scaling: other content
    assert registry.register("c", copy).digest != first.digest
    patch_tensors(copy, lambda t: t[Q0A].add_(1.0))
    patch_config(copy, lora_alpha=8.0)
    assert registry.register("d", copy).digest not in (first.digest, registry.get("c").digest)
