"""DoRA adapters (PEFT use_dora=True): what is accepted, what is refused naming the field, what is loaded."""

import pytest
import torch

from server.adapters.formats import DORA, LORA, dora_scale, format_for_config
from server.adapters.registry import AdapterRegistry
from server.adapters.shapes import module_shapes
from server.adapters.types import AdapterError
from tests.server.adapters.helpers import patch_config, patch_tensors


def add_magnitudes(path, value: float = 1.5) -> None:
    def edit(tensors):
        for key in [k for k in tensors if k.endswith("lora_B.weight")]:
            out = tensors[key].shape[0]
            tensors[key.replace("lora_B.weight", "lora_magnitude_vector")] = torch.full((out,), value)

    patch_tensors(path, edit)


@pytest.fixture
def dora_adapter(make_adapter):
    def make(name="d", **kw):
        path = make_adapter(name, **kw)
        patch_config(path, use_dora=True)
        add_magnitudes(path)
        return path

    return make


def test_format_is_chosen_by_use_dora():
    assert format_for_config({"use_dora": True}) is DORA
    assert format_for_config({"use_dora": False}) is LORA and format_for_config({}) is LORA


def test_dora_adapter_registers_with_its_magnitudes(tiny_config, dora_adapter):
    registry = AdapterRegistry(tiny_config)
    ref = registry.register("d", dora_adapter(rank=4, modules=("q_proj", "down_proj"), rslora=True))
    assert ref.format == "dora" and ref.use_rslora
    weights = registry.weights(ref)
    shapes = module_shapes(tiny_config)
    assert set(weights.extra) == {"magnitude"}
    for (layer, m), mag in weights.extra["magnitude"].items():
        assert mag.shape == (shapes[m][1],) and torch.all(mag == 1.5), (layer, m)
    assert set(weights.extra["magnitude"]) == set(weights.a) == set(weights.b)


def test_dora_and_lora_of_the_same_file_differ_in_content(tiny_config, make_adapter, dora_adapter):
    registry = AdapterRegistry(tiny_config)
    assert registry.register("d", dora_adapter()).digest != registry.register("l", make_adapter("l")).digest


def test_dora_without_magnitudes_is_refused(tiny_config, make_adapter):
    path = make_adapter()
    patch_config(path, use_dora=True)
    with pytest.raises(AdapterError, match="missing tensor .*lora_magnitude_vector"):
        AdapterRegistry(tiny_config).register("d", path)


def test_magnitudes_without_dora_are_refused(tiny_config, make_adapter):
    path = make_adapter()
    add_magnitudes(path)
    with pytest.raises(AdapterError, match="unexpected tensor .*lora_magnitude_vector"):
        AdapterRegistry(tiny_config).register("l", path)


def test_magnitude_of_the_wrong_shape_is_refused(tiny_config, dora_adapter):
    path = dora_adapter()

    def edit(tensors):
        key = next(k for k in tensors if k.endswith("lora_magnitude_vector"))
        tensors[key] = tensors[key][:-1].clone()

    patch_tensors(path, edit)
    with pytest.raises(AdapterError, match="lora_magnitude_vector.* has shape"):
        AdapterRegistry(tiny_config).register("d", path)


@pytest.mark.parametrize("field, value, words", [
    ("lora_bias", True, ["lora_bias", "use_dora"]),  # PEFT refuses it with DoRA too
    ("use_dora", "yes", ["use_dora must be true or false"]),
    ("rank_pattern", {"q_proj": 8}, ["unsupported option rank_pattern"]),
    ("layer_replication", [[0, 2]], ["unsupported option layer_replication"]),
    ("target_modules", ["q_proj", "embed_tokens"], ["target module", "embed_tokens"]),  # DoRA on embeddings
    ("target_modules", ["q_proj", "lm_head"], ["target module", "lm_head"]),
])
def test_unsupported_dora_variants_name_the_field(tiny_config, dora_adapter, field, value, words):
    path = dora_adapter()
    patch_config(path, **{field: value})
    with pytest.raises(AdapterError) as err:
        AdapterRegistry(tiny_config).register("d", path)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_runtime_options_do_not_change_the_math_and_are_accepted(tiny_config, dora_adapter):
    path = dora_adapter()  # PEFT's runtime_config (ephemeral_gpu_offload) only moves where DoRA's init runs
    patch_config(path, runtime_config={"ephemeral_gpu_offload": True})
    assert AdapterRegistry(tiny_config).register("d", path).format == "dora"


def test_dora_scale_is_magnitude_over_the_adapted_row_norm():
    torch.manual_seed(0)
    w, a, b = torch.randn(6, 5), torch.randn(3, 5), torch.randn(6, 3)
    mag = torch.rand(6) + 0.5
    got = dora_scale(w, a, b, mag, 0.7)
    want = torch.stack([mag[c] / (w[c] + 0.7 * (b @ a)[c]).norm() for c in range(6)])
    torch.testing.assert_close(got, want)
