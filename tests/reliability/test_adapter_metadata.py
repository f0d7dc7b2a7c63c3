# ruff: noqa: F811 (the fixtures imported from tests/server/adapters/conftest.py)
"""loraplex.json is checked at registration: a bad one refuses its adapter and leaves nothing behind."""

import json
import math

import pytest
import torch

from router.embedding import EmbeddingOptions, EmbeddingRouter
from server.adapters.metadata import MAX_EXAMPLES, MAX_TEXT_CHARS, METADATA_FILE
from server.adapters.registry import AdapterRegistry
from server.adapters.types import AdapterError
from tests.server.adapters.conftest import bank, make_adapter, tiny_config  # noqa: F401 (fixtures)

GOOD = {"examples": ["Review: great soup.\nSentiment:"], "description": "Review sentiment", "task": "kept aside"}

BAD = {
    "not_json": (b"{examples: [", "Invalid JSON"),
    "not_utf8": (b'{"examples": ["\xff\xfe"]}', "Invalid JSON"),
    "not_an_object": (b'["a"]', "object"),
    "examples_not_a_list": (b'{"examples": "a"}', "examples"),
    "example_not_a_string": (b'{"examples": ["a", 3]}', "examples.1"),
    "empty_example": (b'{"examples": ["a", ""]}', "examples.1"),
    "blank_example": (b'{"examples": ["  \\n"]}', "examples.0"),
    "empty_description": (b'{"description": ""}', "description"),
    "description_not_a_string": (b'{"description": ["a"]}', "description"),
    "too_many": (json.dumps({"examples": ["a"] * (MAX_EXAMPLES + 1)}).encode(), "examples"),
    "too_long": (json.dumps({"examples": ["a" * (MAX_TEXT_CHARS + 1)]}).encode(), "examples.0"),
    "too_deep": (b'{"examples": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "Invalid JSON"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_file_refuses_the_adapter_until_fixed(tiny_config, make_adapter, case):
    data, field = BAD[case]
    path = make_adapter("a")
    (path / METADATA_FILE).write_bytes(data)
    registry = AdapterRegistry(tiny_config)
    with pytest.raises(AdapterError) as err:
        registry.register("a", path)
    assert "'a'" in str(err.value) and METADATA_FILE in str(err.value) and field in str(err.value), str(err.value)
    assert "a" not in registry and len(registry) == 0 and registry.host_cache.stats.entries == 0

    (path / METADATA_FILE).write_text(json.dumps(GOOD))  # fixed: the same name registers
    ref = registry.register("a", path)
    assert ref.examples == tuple(GOOD["examples"]) and ref.description == GOOD["description"]
    assert ref.routing_texts == (*GOOD["examples"], GOOD["description"])


def test_no_file_means_no_examples(tiny_config, make_adapter):
    ref = AdapterRegistry(tiny_config).register("a", make_adapter())
    assert (ref.examples, ref.description, ref.routing_texts) == ((), None, ())


def test_adapter_dir_skips_a_bad_file_and_serves_the_rest(tiny_config, make_adapter, tmp_path):
    root = tmp_path / "lib"
    for name in ("a", "b", "c"):
        make_adapter(name, root=root)
    (root / "a" / METADATA_FILE).write_text(json.dumps(GOOD))
    (root / "b" / METADATA_FILE).write_bytes(BAD["empty_example"][0])
    (root / "c" / METADATA_FILE).write_bytes(BAD["too_deep"][0])
    registry = AdapterRegistry(tiny_config)
    refs = registry.register_dir(root, skip_invalid=True)  # start-up: never raises for a folder's content
    assert [r.name for r in refs] == ["a"] and refs[0].examples == tuple(GOOD["examples"])
    with pytest.raises(AdapterError, match="2 invalid adapters"):
        AdapterRegistry(tiny_config).register_dir(root)


def test_an_example_of_no_tokens_never_makes_a_nan_score():
    router = EmbeddingRouter("auto", torch.randn(50, 8, generator=torch.Generator().manual_seed(0)),
                             EmbeddingOptions(fallback="off"))
    router.add("empty", [[]])
    router.add("a", [[], [1, 2, 3]])
    router.add("b", [[7, 8]])
    decision = router.route([1, 2, 4])
    assert decision.adapter == "a" and decision.scores and all(math.isfinite(s) for s in decision.scores.values())
