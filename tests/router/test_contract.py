"""Every router kind keeps the one contract (router/contract.py), and the API speaks nothing else."""

import ast
import json
from pathlib import Path

import pytest
import torch

from router.contract import AdapterInfo, RouteQuery, TaskRouter
from router.kinds import build_router

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def kinds(tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"pattern": "^Sum", "adapter": "a"}]}))
    return {"auto": "embedding", "ops": f"rules:{rules}", "arrow": "arrow", "blend": "arrow:top_k=2,fallback=off"}


def _tokenize(text: str) -> list[int]:  # a toy tokenizer over a 16-token vocabulary
    return [ord(c) % 16 for c in text[:6]]


def test_each_kind_builds_a_task_router_that_says_what_it_needs(kinds):
    table = torch.randn(16, 8)
    built = {name: build_router(name, kind, lambda: table, tokenize=_tokenize) for name, kind in kinds.items()}
    assert all(isinstance(r, TaskRouter) and r.name == n for n, r in built.items())
    assert {n: r.needs for n, r in built.items()} == {
        "auto": "tokens", "ops": "text", "arrow": "features", "blend": "features"}
    assert built["arrow"].calibration_prompts and built["arrow"].max_prompt_tokens == 256
    with pytest.raises(ValueError, match="unknown kind"):
        build_router("x", "nearest", lambda: table)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        build_router("auto", "embedding", lambda: table)
    assert build_router("auto", "embedding:fallback=off", lambda: table).options.fallback == "off"


def test_adapters_come_and_go_through_the_contract(kinds):
    table = torch.randn(16, 8)
    emb = build_router("auto", "embedding", lambda: table, tokenize=_tokenize)
    emb.adapter_added(AdapterInfo("a", ((1, 2, 3), (1, 2))))
    emb.adapter_added(AdapterInfo("b", ((9, 10, 11), (12, 13))))
    assert emb.choose(RouteQuery("", (9, 10, 11))).scores
    emb.adapter_removed("b")
    assert emb.choose(RouteQuery("", (9, 10, 11))).adapter in (None, "a")

    arrow = build_router("arrow", "arrow", lambda: table)
    proto = {(0, "q_proj"): torch.nn.functional.one_hot(torch.tensor(0), 8).float()}
    arrow.adapter_added(AdapterInfo("a", (), proto))
    assert arrow.uncalibrated() == ["a"] and arrow.feature_keys() == {(0, "q_proj")}
    arrow.calibrate([{(0, "q_proj"): torch.randn(5, 8, generator=torch.Generator().manual_seed(i))} for i in range(8)])
    assert arrow.uncalibrated() == []
    d = arrow.choose(RouteQuery("x", (1, 2), {(0, "q_proj"): torch.eye(8)[:1].repeat(3, 1)}))
    assert d.adapter == "a" and not d.fell_back
    arrow.adapter_removed("a")
    assert arrow.feature_keys() == set() and arrow.choose(RouteQuery("x")).adapters == ()

    ops = build_router("ops", kinds["ops"], lambda: table)
    assert ops.choose(RouteQuery("Sum 2 and 3")).adapter == "a" and ops.choose(RouteQuery("hi")).fell_back


def test_the_api_names_no_router_kind():
    """server/api holds routers as TaskRouter (built by router.kinds): it imports no router class."""
    bad = []
    for path in sorted((REPO / "server" / "api").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("router"):
                bad += [f"{path.relative_to(REPO)}: {a.name}" for a in node.names
                        if a.name.endswith("Router") and a.name != "TaskRouter"]
            elif isinstance(node, ast.Import) and any(a.name.startswith("router") for a in node.names):
                bad.append(f"{path.relative_to(REPO)}: import {node.names[0].name}")
    assert bad == []
