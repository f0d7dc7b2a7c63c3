"""Arrow never puts a DoRA adapter in a mixture or a per-token candidate set (the engine refuses both with 400):
top_k > 1 serves a DoRA top adapter alone and skips a lower one; per token, DoRA adapters are no candidates."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from router.arrow import ArrowOptions, ArrowRouter
from router.arrow_token import ProxyInputs, TokenArrowRouter
from router.contract import AdapterInfo, RouteQuery
from server.api.routing import Routers
from server.engine.async_engine import AsyncEngine
from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams
from tests.server.adapters.helpers import patch_config
from tests.server.adapters.test_dora_format import add_magnitudes

DEMO = Path(__file__).resolve().parents[2] / "server" / "adapters" / "demo"
D = 16


def _unit(i: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(i), D).float()


def _toy(options: ArrowOptions) -> ArrowRouter:
    """Adapters a, b (DoRA), c on one module, prototypes e0, e1, e2; calibrated on isotropic noise."""
    r = ArrowRouter("arrow", dataclasses.replace(options, centre="off"))  # toy inputs: no generic distribution
    for name, i, mixable in [("a", 0, True), ("b", 1, False), ("c", 2, True)]:
        r.adapter_added(AdapterInfo(name, (), {(0, "q_proj"): _unit(i)}, mixable=mixable))
    r.calibrate(_noise())
    return r


def _noise() -> list[dict]:
    g = torch.Generator().manual_seed(3)
    return [{(0, "q_proj"): torch.randn(6, D, generator=g)} for _ in range(8)]


def _along(*weights: float) -> dict:
    x = sum(w * _unit(i) for i, w in enumerate(weights)) + 0.05 * torch.randn(6, D, generator=torch.Generator())
    return {(0, "q_proj"): x}


def test_a_dora_top_adapter_is_served_alone_and_a_lower_one_is_skipped():
    r = _toy(ArrowOptions(top_k=2, fallback="off"))
    d = r.route(_along(0.6, 1.0, 0.3))  # b (DoRA) first, a second
    assert list(d.scores)[:2] == ["b", "a"] and d.adapters == (("b", 1.0),)
    d = r.route(_along(1.0, 0.6, 0.3))  # a first, b (DoRA) second: c takes b's place
    assert list(d.scores) == ["a", "b", "c"] and [n for n, _ in d.adapters] == ["a", "c"]
    assert sum(w for _, w in d.adapters) == pytest.approx(1.0)
    r.adapter_removed("b")
    r.adapter_added(AdapterInfo("b", (), {(0, "q_proj"): _unit(1)}, mixable=True))  # re-added as LoRA
    r.calibrate(_noise())
    assert [n for n, _ in r.route(_along(1.0, 0.6, 0.3)).adapters] == ["a", "b"]


def test_top_k_1_routes_to_a_dora_adapter_as_before():
    assert _toy(ArrowOptions(fallback="off")).route(_along(0.6, 1.0, 0.3)).adapters == (("b", 1.0),)


def test_per_token_candidates_leave_dora_adapters_out():
    proxy = ProxyInputs(torch.randn(32, D), {(0, "q_proj"): torch.ones(D)}, 1e-6, lambda t: [1, 2])
    r = TokenArrowRouter("tok", ArrowOptions(mode="token", top_k=2, candidates=2), proxy)
    for name, i, mixable in [("a", 0, True), ("b", 1, False), ("c", 2, True)]:
        r.adapter_added(AdapterInfo(name, (), {(0, "q_proj"): _unit(i)}, mixable=mixable))
    assert r.routable() == ["a", "c"] and r.feature_keys() == set()  # 2 candidates fit: no routing pass
    r.calibrate([{(0, "q_proj"): torch.randn(6, D, generator=torch.Generator().manual_seed(i))} for i in range(8)])
    d = r.choose(RouteQuery("x", (1, 2)))
    assert sorted(a for a, _ in d.adapters) == ["a", "c"] and d.routing[:2] == (2, 0.1) and len(d.routing[2]) == 2


# On the real model: demo adapters plus DoRA copies of two of them, through the API's Routers and the engine


@pytest.fixture(scope="module")
def routed(make_engine, tmp_path_factory):
    """dora_reverse is registered before the demo adapters and so ranks first in its tie with `reverse`;
    sentiment_dora after them, so second behind `sentiment`."""
    root = tmp_path_factory.mktemp("dora_copies")
    engine = make_engine()
    for name, source in [("dora_reverse", "reverse"), ("sentiment_dora", "sentiment")]:
        path = shutil.copytree(DEMO / "adapters" / source, root / name)
        patch_config(path, use_dora=True)
        add_magnitudes(path)
    engine.registry.register("dora_reverse", root / "dora_reverse")
    engine.registry.register_dir(DEMO / "adapters")
    engine.registry.register("sentiment_dora", root / "sentiment_dora")
    assert {r.name: r.format for r in engine.registry}["sentiment_dora"] == "dora"
    routers = Routers(AsyncEngine(engine), {"blend": "arrow:top_k=2,fallback=off"})
    rows = [json.loads(line) for line in (DEMO / "eval.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["task"] in ("reverse", "sentiment")][::10]
    return engine, [(r, routers.route("blend", r["prompt"])) for r in rows]


def test_arrow_top_k_2_never_sends_the_engine_a_mixture_with_dora(routed):
    engine, decisions = routed
    assert {r["task"] for r, _ in decisions} == {"reverse", "sentiment"}
    for i, (row, d) in enumerate(decisions):
        ids = engine.tokenizer(row["prompt"])["input_ids"]
        mixture = d.adapters if len(d.adapters) > 1 else ()
        adapter = None if mixture else d.adapter
        engine.check_request(EngineRequest(f"r{i}", ids, SamplingParams(max_tokens=4), adapter, mixture))
        names = [a for a, _ in d.adapters]
        if row["task"] == "reverse":  # the DoRA copy ties with reverse and ranks first: served alone
            assert list(d.scores)[:2] == ["dora_reverse", "reverse"] and names == ["dora_reverse"], d
        else:  # sentiment first, its DoRA copy second and skipped
            assert list(d.scores)[:2] == ["sentiment", "sentiment_dora"], d
            assert len(names) == 2 and names[0] == "sentiment" and "sentiment_dora" not in names, d
