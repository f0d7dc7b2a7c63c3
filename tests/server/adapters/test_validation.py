"""Each way an adapter can be bad is refused with an AdapterError that names the adapter and the problem."""

import pytest
import torch

from server.adapters.adapter_config import PICKLE_FILE, WEIGHTS_FILE
from server.adapters.registry import AdapterRegistry
from server.adapters.types import AdapterError
from tests.server.adapters.helpers import patch_config, patch_tensors

Q0A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.fixture
def registry(tiny_config):
    return AdapterRegistry(tiny_config, max_rank=16)


def refused(registry, path, *words, name="bad"):
    with pytest.raises(AdapterError) as err:
        registry.register(name, path)
    message = str(err.value)
    assert repr(name) in message
    for word in words:
        assert word in message, message
    assert name not in registry  # a bad config or bad weights never register
    return message


# files
def test_missing_config(registry, make_adapter):
    path = make_adapter()
    (path / "adapter_config.json").unlink()
    refused(registry, path, "missing adapter_config.json")


def test_missing_weights(registry, make_adapter):
    path = make_adapter()
    (path / WEIGHTS_FILE).unlink()
    refused(registry, path, f"missing {WEIGHTS_FILE}")


def test_pickle_weights_are_refused_and_never_read(registry, make_adapter):
    path = make_adapter()
    (path / WEIGHTS_FILE).unlink()
    (path / PICKLE_FILE).write_bytes(b"\x80\x04cos\nsystem\n.")  # would run code if unpickled
    refused(registry, path, "pickle", PICKLE_FILE)


def test_not_a_directory(registry, tmp_path):
    refused(registry, tmp_path / "nowhere", "not a directory")


def test_config_not_json(registry, make_adapter):
    path = make_adapter()
    (path / "adapter_config.json").write_text("{r: 8")
    refused(registry, path, "cannot read adapter_config.json")


# config fields
def test_peft_type_not_lora(registry, make_adapter):
    path = make_adapter()
    patch_config(path, peft_type="IA3")
    refused(registry, path, "peft_type 'IA3'", "only LORA")


def test_peft_type_missing(registry, make_adapter):
    path = make_adapter()
    patch_config(path, peft_type=...)
    refused(registry, path, "peft_type None")


def test_task_type_not_causal_lm(registry, make_adapter):
    path = make_adapter()
    patch_config(path, task_type="SEQ_CLS")
    refused(registry, path, "task_type 'SEQ_CLS'")


@pytest.mark.parametrize("target", ["lm_head", "embed_tokens", "c_attn", "input_layernorm"])
def test_unsupported_target_module_in_list(registry, make_adapter, target):
    path = make_adapter()
    patch_config(path, target_modules=["q_proj", target])
    refused(registry, path, "target module", target, "not supported")


def test_unsupported_target_module_by_regex(registry, make_adapter):
    path = make_adapter()
    patch_config(path, target_modules=r".*(q_proj|lm_head)")
    refused(registry, path, "target module 'lm_head'", "not supported")


def test_regex_matching_nothing(registry, make_adapter):
    path = make_adapter()
    patch_config(path, target_modules=r".*\.attn\.c_proj")
    refused(registry, path, "matches no module")


def test_target_modules_wrong_type(registry, make_adapter):
    path = make_adapter()
    patch_config(path, target_modules=None)
    refused(registry, path, "target_modules must be")


def test_rank_above_max(registry, make_adapter):
    path = make_adapter(rank=32)
    refused(registry, path, "r=32", "max rank 16")


def test_rank_not_positive_integer(registry, make_adapter):
    path = make_adapter()
    patch_config(path, r=0)
    refused(registry, path, "r must be a positive integer")


def test_alpha_not_a_number(registry, make_adapter):
    path = make_adapter()
    patch_config(path, lora_alpha="16")
    refused(registry, path, "lora_alpha")


@pytest.mark.parametrize("field, value", [
    ("lora_bias", True), ("modules_to_save", ["lm_head"]), ("rank_pattern", {"q_proj": 8}),
    ("alpha_pattern", {"v_proj": 32}), ("bias", "all"), ("layer_replication", [[0, 2]]),
    ("trainable_token_indices", [5]), ("exclude_modules", ["v_proj"]), ("some_future_option", 3),
])
def test_unsupported_option_names_the_field(registry, make_adapter, field, value):
    path = make_adapter()
    patch_config(path, **{field: value})
    refused(registry, path, "unsupported option", field)


def test_base_rewriting_init_is_refused(registry, make_adapter):
    path = make_adapter()
    patch_config(path, init_lora_weights="pissa_niter_4")
    refused(registry, path, "init_lora_weights", "pissa")


def test_layers_outside_the_model(registry, make_adapter):
    path = make_adapter()
    patch_config(path, layers_to_transform=[1, 7])
    refused(registry, path, "layers_to_transform [7]")


def test_different_modules_per_layer(registry, make_adapter):
    path = make_adapter()
    patch_config(path, target_modules=["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"])
    refused(registry, path, "different modules in different layers")


# names
@pytest.mark.parametrize("name", ["", "  ", "a/b", "..", "a\\b", "tab\there"])
def test_bad_names(registry, make_adapter, name):
    path = make_adapter()
    with pytest.raises(AdapterError, match="adapter name"):
        registry.register(name, path)
    assert len(registry) == 0


# weights (checked at registration too, so a bad adapter is refused by its load call)
def test_shape_that_does_not_fit_the_base(registry, make_adapter):
    path = make_adapter()
    patch_tensors(path, lambda t: t.update({Q0A: torch.zeros(4, 65)}))
    refused(registry, path, Q0A, "shape (4, 65)", "needs (4, 64)")


def test_rank_in_file_differs_from_config(registry, make_adapter):
    path = make_adapter(rank=4)
    patch_config(path, r=8)
    refused(registry, path, "shape (4, 64)", "needs (8, 64)")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values(registry, make_adapter, bad):
    path = make_adapter()

    def poison(tensors):
        tensors[Q0A][1, 2] = bad

    patch_tensors(path, poison)
    refused(registry, path, Q0A, "non-finite")


def test_value_overflowing_the_compute_dtype(tiny_config, make_adapter):
    from server.adapters.host_cache import HostCache

    registry = AdapterRegistry(tiny_config, host_cache=HostCache(tiny_config, dtype=torch.float16))
    path = make_adapter()

    def huge(tensors):
        tensors[Q0A][0, 0] = 1e6  # finite in fp32, inf in fp16

    patch_tensors(path, huge)
    refused(registry, path, "non-finite", "float16")


def test_missing_tensor(registry, make_adapter):
    path = make_adapter()
    patch_tensors(path, lambda t: t.pop(Q0A))
    refused(registry, path, "missing tensor", Q0A)


def test_extra_tensor(registry, make_adapter):
    path = make_adapter()
    extra = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    patch_tensors(path, lambda t: t.update({extra: torch.ones(64)}))
    refused(registry, path, "unexpected tensor", extra)


def test_integer_tensor(registry, make_adapter):
    path = make_adapter()
    patch_tensors(path, lambda t: t.update({Q0A: torch.zeros(4, 64, dtype=torch.int32)}))
    refused(registry, path, Q0A, "not a float type")


def test_corrupt_safetensors(registry, make_adapter):
    path = make_adapter()
    (path / WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    refused(registry, path, "not a readable safetensors file")


def test_weights_deleted_after_registration(registry, make_adapter):
    path = make_adapter()
    ref = registry.register("bad", path)
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(AdapterError, match=f"'bad': missing {WEIGHTS_FILE}"):
        registry.weights(ref)
