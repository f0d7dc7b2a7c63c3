"""Arrow's fallback rule (fallback=generic): each adapter's top score is tested against the spread of its own
scores on generic text, at level alpha over the adapters competing; no threshold fitted to an adapter set."""

import statistics

import pytest
import torch

from router.arrow import ArrowOptions, ArrowRouter

D, T = 32, 256  # long prompts: a mean over many tokens has a small spread


def _unit(i: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(i), D).float()


def _noise(seed: int, keys) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(T, D, generator=g) for k in sorted(keys)}  # sorted: set order varies by process


def _router(options: ArrowOptions) -> ArrowRouter:
    r = ArrowRouter("arrow", options)
    r.add("a", {(0, "q_proj"): _unit(0)})
    r.add("b", {(1, "v_proj"): _unit(5)})
    r.calibrate([_noise(100 + i, r.feature_keys()) for i in range(8)])
    return r


def _leaning_to_b(strength: float, seed: int = 7) -> dict:
    """Generic tokens with a small push along b's prototype."""
    f = _noise(seed, {(0, "q_proj"), (1, "v_proj")})
    f[1, "v_proj"] = f[1, "v_proj"] + strength * _unit(5)
    return f


def test_a_weak_but_significant_score_is_routed_where_a_fixed_threshold_drops_it():
    generic, fixed = _router(ArrowOptions()), _router(ArrowOptions(fallback="threshold", threshold=1.25))
    f = _leaning_to_b(0.7)
    score = generic.evidence(f)["b"]
    assert 1.0 < score < 1.25  # a fixed 1.25 calls it generic text ...
    assert fixed.route(f).fell_back
    d = generic.route(f)  # ... but it is many of b's own generic-text deviations above their mean
    assert d.adapter == "b" and not d.fell_back and generic.z("b", score) > 3


def test_off_task_prompts_fall_back_at_about_the_stated_rate():
    r = _router(ArrowOptions(alpha=0.05))
    routed = sum(not r.route(_noise(1000 + i, r.feature_keys())).fell_back for i in range(100))
    assert routed <= 10  # alpha 0.05 with the spread estimated from 8 prompts: a few, not many


def test_the_bar_rises_with_the_number_of_adapters_competing():
    r = _router(ArrowOptions(alpha=0.05))
    z2 = statistics.NormalDist().inv_cdf(1 - 0.05 / 2)
    score_at = 1 + z2 * r._spread["b"]
    assert r.confident("b", score_at * 1.001)
    for i in range(8):
        r.add(f"x{i}", {(0, "q_proj"): _unit(10 + i)})
    r.calibrate([_noise(100 + i, r.feature_keys()) for i in range(8)])
    assert not r.confident("b", score_at * 1.001)  # 10 adapters: a top score among 10 needs more


@pytest.mark.parametrize("strength", [0.0, 0.7])
def test_fallback_off_always_routes_and_mixtures_take_only_significant_adapters(strength):
    off = _router(ArrowOptions(fallback="off", top_k=2))
    d = off.route(_leaning_to_b(strength))
    assert not d.fell_back and len(d.adapters) == 2
    generic = _router(ArrowOptions(top_k=2))
    d = generic.route(_leaning_to_b(strength))
    assert [a for a, _ in d.adapters] == ([] if strength == 0 else ["b"])


def test_centring_ranks_on_inputs_minus_their_generic_mean_and_leaves_the_fallback_test_as_it_was():
    """Scores are |cos(x - generic mean, v)| over the same on the generic prompts (each against the others'
    mean); the fallback test reads the uncentred evidence (that of centre=off) of the adapter ranked first."""
    shared = 3.0 * _unit(1)

    def with_shared(f: dict) -> dict:
        return {k: x + shared for k, x in f.items()}

    routers = {}
    for centre in ("generic", "off"):
        r = ArrowRouter("arrow", ArrowOptions(centre=centre, fallback="off"))
        r.add("shared", {(0, "q_proj"): torch.nn.functional.normalize(_unit(1) + 0.5 * _unit(2), dim=0)})
        r.add("task", {(0, "q_proj"): torch.nn.functional.normalize(0.5 * _unit(1) + _unit(3), dim=0)})
        r.calibrate([with_shared(_noise(100 + i, r.feature_keys())) for i in range(8)])
        routers[centre] = r
    torch.testing.assert_close(routers["generic"]._centre[0, "q_proj"], shared, atol=0.1, rtol=0)
    f = with_shared(_noise(5, {(0, "q_proj")}))
    f[0, "q_proj"] = f[0, "q_proj"] + 1.5 * _unit(3) + 1.2 * _unit(2)  # leans to both, to task more
    r = routers["generic"]
    centred = r.scores(f)
    assert centred["task"] > centred["shared"]
    x = torch.nn.functional.normalize(f[0, "q_proj"] - r._centre[0, "q_proj"], dim=-1)
    want = float((x @ r._protos["task"][0, "q_proj"]).abs().mean()) / r._rank_base["task"]
    assert centred["task"] == pytest.approx(want)
    assert r._rank_base["task"] != pytest.approx(r._baseline["task"])
    assert routers["generic"].evidence(f) == pytest.approx(routers["off"].evidence(f))
    r.options = ArrowOptions()  # the generic fallback rule
    decisions = set()
    for seed in range(20):
        g = with_shared(_noise(2000 + seed, {(0, "q_proj")}))
        g[0, "q_proj"] = g[0, "q_proj"] + 0.2 * seed * _unit(3)  # from generic text to clearly on task
        top = max((s := r.scores(g)), key=s.get)
        d = r.route(g)
        assert d.fell_back == (not r.confident(top, r.evidence(g)[top]))
        decisions.add(d.fell_back)
    assert decisions == {True, False}
