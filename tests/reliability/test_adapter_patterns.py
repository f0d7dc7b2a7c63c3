# ruff: noqa: F811 (the fixtures imported from tests/server/adapters/conftest.py)
"""adapter_config.json patterns run in linear time (RE2) with PEFT's matching rules.

Under Python's re, "(.*.*)*x" as target_modules backtracks for hours on the base model's module names,
holding the GIL: the whole server would freeze on one load.
"""

import pytest

from server.adapters.adapter_config import MAX_PATTERN_CHARS
from server.adapters.registry import AdapterRegistry
from server.adapters.types import MODULES, AdapterError
from tests.server.adapters.conftest import bank, make_adapter, tiny_config  # noqa: F401 (fixtures)
from tests.server.adapters.helpers import patch_config

CATASTROPHIC = [r"(.*.*)*x", r"(.*){20}z"]


def refused(tiny_config, path, *words):
    registry = AdapterRegistry(tiny_config)
    with pytest.raises(AdapterError) as err:
        registry.register("p", path)
    for word in ("'p'", *words):
        assert word in str(err.value), str(err.value)
    assert "p" not in registry


@pytest.mark.timeout(10)
@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_target_modules_regex_finishes(tiny_config, make_adapter, pattern):
    path = make_adapter()
    patch_config(path, target_modules=pattern)
    refused(tiny_config, path, "matches no module")


@pytest.mark.timeout(10)
def test_catastrophic_regex_that_matches_is_served(tiny_config, make_adapter):
    path = make_adapter(modules=("q_proj", "v_proj"))
    patch_config(path, target_modules=r"(.*.*)*\.(q|v)_proj")
    assert AdapterRegistry(tiny_config).register("p", path).target_modules == ("q_proj", "v_proj")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_layers_pattern_finishes(tiny_config, make_adapter, pattern):
    path = make_adapter(layers=[1])
    patch_config(path, layers_pattern=pattern)
    refused(tiny_config, path, "select no module")


@pytest.mark.parametrize("field, value", [
    ("target_modules", r"(q)_proj|\1"),  # backreference
    ("target_modules", r"(?!k).*\.q_proj"),  # lookahead
    ("layers_pattern", r"(?<=model\.)layers"),  # lookbehind
])
def test_what_re2_cannot_run_is_refused_naming_the_field(tiny_config, make_adapter, field, value):
    if field == "layers_pattern":
        path = make_adapter(layers=[1])
        patch_config(path, layers_pattern=value)
    else:
        path = make_adapter()
        patch_config(path, target_modules=value)
    refused(tiny_config, path, field, "RE2")


@pytest.mark.parametrize("field", ["target_modules", "layers_pattern"])
def test_overlong_patterns_are_refused(tiny_config, make_adapter, field):
    long = "a" * (MAX_PATTERN_CHARS + 1)
    if field == "layers_pattern":
        path = make_adapter(layers=[1])
        patch_config(path, layers_pattern=long)
    else:
        path = make_adapter()
        patch_config(path, target_modules=long)
    refused(tiny_config, path, field, f"longer than {MAX_PATTERN_CHARS}")


def test_a_huge_target_list_is_refused(tiny_config, make_adapter):
    path = make_adapter()
    patch_config(path, target_modules=[f"model.layers.{i}.self_attn.q_proj" for i in range(5000)])
    refused(tiny_config, path, "target_modules lists 5000 names")


# PEFT's semantics, kept (tests/server/adapters/test_validation.py and test_registry.py hold the rest)
@pytest.mark.parametrize("targets, modules", [
    (r".*\.(q_proj|v_proj)", ("q_proj", "v_proj")),  # a string is a full match over the module name
    (r"model\.layers\.\d+\.self_attn\.(q|v)_proj", ("q_proj", "v_proj")),
    (["q_proj", "v_proj", "q_proj"], ("q_proj", "v_proj")),  # a list: exact names or ".name" suffixes
])
def test_peft_matching_is_kept(tiny_config, make_adapter, targets, modules):
    path = make_adapter(modules=modules)
    patch_config(path, target_modules=targets)
    assert AdapterRegistry(tiny_config).register("p", path).target_modules == modules


def test_a_bare_name_as_a_regex_matches_nothing_as_in_peft(tiny_config, make_adapter):
    path = make_adapter()
    patch_config(path, target_modules="q_proj")  # fullmatch against "model.layers.0.self_attn.q_proj"
    refused(tiny_config, path, "matches no module")


@pytest.mark.parametrize("pattern", ["layers", ["blocks", "layers"], ""])
def test_layers_pattern_picks_the_layer_index(tiny_config, make_adapter, pattern):
    path = make_adapter(modules=MODULES[:2], layers=[0, 2])
    patch_config(path, layers_to_transform=[2, 0, 2], layers_pattern=pattern)
    ref = AdapterRegistry(tiny_config).register("p", path)
    assert ref.layers == (0, 2) and ref.target_modules == MODULES[:2]
