"""Arrow per token, the request-level part: candidates ranked on proxy inputs (no forward pass)."""

import pytest
import torch

from router.arrow import ArrowOptions
from router.arrow_token import PROXY_MODULES, ProxyInputs, TokenArrowRouter
from router.contract import RouteQuery
from router.kinds import build_router

V, D, LAYERS = 40, 16, 2


@pytest.fixture
def proxy():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(V, D, generator=g)
    gains = {(layer, m): 1 + 0.1 * torch.randn(D, generator=g) for layer in range(LAYERS) for m in PROXY_MODULES}
    # the generic prompts are tokens 0..19; each word of a task prompt is one of tokens 20..39
    return ProxyInputs(emb, gains, 1e-5, lambda text: [hash(w) % 20 for w in text.split()])


def _proto(proxy, token: int, key) -> torch.Tensor:
    x = proxy.features([token], {key})[key][0]
    return x / x.norm()


@pytest.fixture
def router(proxy):
    r = TokenArrowRouter("tok", ArrowOptions(mode="token", top_k=2, temperature=0.5, candidates=2, rank="proxy"), proxy)
    for i, name in enumerate(["a", "b", "c"]):  # adapter i follows token 20 + i, on different projections
        key = (i % LAYERS, PROXY_MODULES[i])
        r.add(name, {key: _proto(proxy, 20 + i, key)})
    r.add("mlp_out", {(0, "down_proj"): torch.ones(D) / D**0.5})  # no proxy input: after every scored adapter
    return r


def test_candidates_are_the_top_m_by_proxy_score_and_carry_the_routing(router):
    d = router.choose(RouteQuery("", (21, 21, 21, 5)))
    assert [a for a, _ in d.adapters][0] == "b" and len(d.adapters) == 2
    assert d.routing == (2, 0.5) and not d.fell_back  # no levels before calibration: PEFT's rule
    assert router.feature_keys() == set()  # the API runs no routing pass for it
    assert [a for a, _ in router.ranked((22,))][:1] == ["c"] and router.ranked((22,))[-1][0] == "mlp_out"


def test_unscored_adapters_fill_the_set_and_removal_forgets(router):
    router.options = ArrowOptions(mode="token", candidates=8, rank="proxy")
    names = [a for a, _ in router.choose(RouteQuery("", (20,))).adapters]
    assert sorted(names) == ["a", "b", "c", "mlp_out"] and names[-1] == "mlp_out"
    router.remove("mlp_out")
    router.remove("a")
    assert sorted(a for a, _ in router.choose(RouteQuery("", (20,))).adapters) == ["b", "c"]


def test_no_adapters_serves_the_base(proxy):
    r = TokenArrowRouter("tok", ArrowOptions(mode="token", rank="proxy"), proxy)
    d = r.choose(RouteQuery("", (1, 2)))
    assert d.adapters == () and d.fell_back and d.routing is None


def test_kinds_build_it_from_the_spec(proxy):
    r = build_router("tok", "arrow:mode=token,top_k=3,temperature=2,candidates=5", lambda: None, lambda: proxy)
    assert isinstance(r, TokenArrowRouter) and r.options.candidates == 5 and r.options.top_k == 3
    plain = ArrowOptions.parse("mode=token")  # per token, the configuration chosen on the demo set
    assert (plain.top_k, plain.temperature, plain.mixed) == (2, 0.25, "base")
    assert (ArrowOptions.parse("").top_k, ArrowOptions.parse("").temperature) == (1, 0.1)
    with pytest.raises(ValueError, match="mode"):
        ArrowOptions.parse("mode=tokens")
    for bad in ("0", "9"):
        with pytest.raises(ValueError, match="candidates"):
            ArrowOptions.parse(f"mode=token,candidates={bad}")


def test_pass_ranking_runs_no_pass_while_every_adapter_is_a_candidate(proxy):
    r = TokenArrowRouter("tok", ArrowOptions(mode="token", candidates=2, centre="off"), proxy)  # toy inputs
    assert r.needs == "features"
    keys = [(0, "q_proj"), (1, "up_proj"), (0, "down_proj")]
    for name, key in zip("abc", keys, strict=True):
        r.add(name, {key: torch.nn.functional.normalize(torch.randn(D), dim=0)})
    assert r.uncalibrated() == ["a", "b", "c"] and r.feature_keys(["a"]) == {keys[0]}
    g = torch.Generator().manual_seed(1)
    r.calibrate([{k: torch.randn(5, D, generator=g) for k in keys} for _ in range(4)])
    assert r.feature_keys() == set(keys)  # 3 adapters > 2 candidates: the API runs a routing pass
    along_c = {k: r._protos["c"][keys[2]] + 0.01 * torch.randn(5, D, generator=g) for k in keys}
    d = r.choose(RouteQuery("", (1, 2, 3, 4, 5), along_c))
    assert d.adapters[0][0] == "c" and len(d.adapters) == 2 and d.routing[:2] == (1, 0.1)
    assert d.routing[2] == tuple(r._levels[a] for a, _ in d.adapters)  # uncentred: request-level's baseline
    assert r._levels == pytest.approx(r._baseline)
    r.remove("a")
    assert r.feature_keys() == set()  # 2 adapters, 2 candidates: every adapter, no pass
    assert sorted(a for a, _ in r.choose(RouteQuery("", (1, 2))).adapters) == ["b", "c"]


def test_levels_are_each_adapters_mean_abs_cos_on_generic_text_over_all_its_projections(router, proxy):
    """mixed=base: one calibration pass per adapter at registration, over every projection it targets (the
    proxy ranking reads only some), then every decision carries its candidates' levels; mixed=peft: none."""
    assert router.uncalibrated() == ["a", "b", "c", "mlp_out"]
    keys = router.feature_keys(["mlp_out", "a"])
    assert keys == {(0, "down_proj"), (0, PROXY_MODULES[0])}
    g = torch.Generator().manual_seed(3)
    keys = router.feature_keys(router.uncalibrated())
    neutral = [{k: torch.randn(4, D, generator=g) for k in keys} for _ in range(3)]
    router.calibrate(neutral)
    assert router.uncalibrated() == []
    v = router._full["mlp_out"][0, "down_proj"]
    want = sum(float((torch.nn.functional.normalize(f[0, "down_proj"], dim=-1) @ v).abs().mean()) for f in neutral) / 3
    assert abs(router._levels["mlp_out"] - want) < 1e-6
    d = router.choose(RouteQuery("", (21, 21, 5)))
    assert d.routing[:2] == (2, 0.5) and d.routing[2] == tuple(router._levels[a] for a, _ in d.adapters)
    peft = TokenArrowRouter("p", ArrowOptions(mode="token", rank="proxy", mixed="peft"), proxy)
    peft.add("a", {(0, "q_proj"): torch.ones(D) / D**0.5})
    assert peft.uncalibrated() == [] and peft.choose(RouteQuery("", (21,))).routing == (1, 0.1)
    with pytest.raises(ValueError, match="mixed"):
        ArrowOptions.parse("mode=token,mixed=layer")
