"""Arrow routing: scores from prototypes on hidden states, calibration, threshold, top-k mixtures."""

import json
from pathlib import Path

import pytest
import torch

from router.arrow import NEUTRAL_PROMPTS, ArrowOptions, ArrowRouter
from router.prototypes import adapter_prototypes

DEMO = Path(__file__).resolve().parents[2] / "server" / "adapters" / "demo"
D = 32


def _unit(i: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(i), D).float()


def _features(direction: torch.Tensor, keys, T=6, noise=0.3, seed=0) -> dict:
    """Tokens mostly along `direction`, with noise."""
    g = torch.Generator().manual_seed(seed)
    return {k: direction + noise * torch.randn(T, D, generator=g) for k in keys}


@pytest.fixture
def toy():
    """Two adapters with orthogonal prototypes on different modules, calibrated on isotropic noise."""
    r = ArrowRouter("arrow", ArrowOptions(fallback="threshold", threshold=1.5))
    r.add("a", {(0, "q_proj"): _unit(0), (1, "q_proj"): _unit(1)})
    r.add("b", {(0, "gate_proj"): _unit(5)})
    assert r.uncalibrated() == ["a", "b"] and r.route(_features(_unit(0), r.feature_keys())).fell_back
    g = torch.Generator().manual_seed(9)
    r.calibrate([{k: torch.randn(6, D, generator=g) for k in r.feature_keys()} for _ in range(8)])
    assert r.uncalibrated() == []
    return r


def test_picks_the_adapter_whose_prototype_the_tokens_follow(toy):
    keys = toy.feature_keys()
    to_a = {k: (_unit(0) if k[0] == 0 else _unit(1)) + 0.3 * torch.randn(6, D) for k in keys}
    d = toy.route(to_a)
    assert d.adapters == (("a", 1.0),) and not d.fell_back and d.scores["a"] > d.scores["b"] > 0
    d = toy.route(_features(_unit(5), keys))
    assert d.adapter == "b"
    assert toy.route(_features(-_unit(5), keys)).adapter == "b"  # |x . v|: the sign carries nothing


def test_threshold_falls_back_to_base_or_default(toy):
    generic = {k: torch.randn(6, D, generator=torch.Generator().manual_seed(3)) for k in toy.feature_keys()}
    d = toy.route(generic)
    assert d.fell_back and d.adapters == () and set(d.scores) == {"a", "b"}
    toy.default = "b"
    assert toy.route(generic).adapters == (("b", 1.0),)


def test_top_k_gives_softmax_weights_over_adapters_above_threshold(toy):
    keys = toy.feature_keys()
    both = {k: _unit(0) + _unit(1) + _unit(5) + 0.1 * torch.randn(6, D) for k in keys}
    toy.options = ArrowOptions(top_k=2, temperature=0.5, fallback="threshold", threshold=1.5)
    d = toy.route(both)
    names = [a for a, _ in d.adapters]
    assert sorted(names) == ["a", "b"] and sum(w for _, w in d.adapters) == pytest.approx(1.0)
    s = d.scores
    expect = torch.tensor([s[n] for n in names]).div(0.5).softmax(0)
    assert [w for _, w in d.adapters] == pytest.approx(expect.tolist(), abs=1e-3)
    toy.options = ArrowOptions(top_k=2, fallback="threshold", threshold=1.5)
    assert [a for a, _ in toy.route(_features(_unit(5), keys)).adapters] == ["b"]  # a is under the threshold


def test_remove_and_options():
    r = ArrowRouter("x")
    r.add("a", {(0, "q_proj"): _unit(0)})
    r.remove("a")
    assert r.feature_keys() == set() and r.route({}).fell_back
    assert ArrowOptions.parse("top_k=3, temperature=0.2") == ArrowOptions(top_k=3, temperature=0.2)
    assert ArrowOptions.parse("") == ArrowOptions()
    assert ArrowOptions.parse("fallback=off,alpha=0.01") == ArrowOptions(fallback="off", alpha=0.01)
    for bad in ["k=2", "top_k", "top_k=0", "temperature=-1", "fallback=sometimes", "alpha=1", "top_k=x"]:
        with pytest.raises(ValueError):
            ArrowOptions.parse(bad)


# On the real model: the engine's routing pass and the demo adapters


@pytest.fixture(scope="module")
def engine(make_engine):
    e = make_engine()
    e.registry.register_dir(DEMO / "adapters")
    return e


def test_routing_pass_captures_the_base_models_projection_inputs(engine, hf_fp32, checkpoint):
    """The features are exactly what HF's model feeds its projections; the pass returns its pages."""
    ids = checkpoint.tokenizer("Reverse the word: lantern")["input_ids"]
    keys = {(0, "q_proj"), (7, "o_proj"), (20, "down_proj"), (29, "gate_proj")}
    free = engine.pool.book.num_free
    got = engine.prompt_features(ids, keys)
    assert engine.pool.book.num_free == free and set(got) == keys
    seen, hooks = {}, []
    for layer, name in keys:
        block = hf_fp32.model.layers[layer]
        mod = getattr(block.self_attn if name.endswith(("q_proj", "o_proj")) else block.mlp, name)
        hooks.append(mod.register_forward_pre_hook(lambda m, a, key=(layer, name): seen.__setitem__(key, a[0][0])))
    try:
        with torch.inference_mode():
            hf_fp32(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    for key in keys:
        torch.testing.assert_close(got[key], seen[key], atol=2e-4, rtol=2e-4)


@pytest.fixture(scope="module")
def demo_arrow(engine, checkpoint):
    r = ArrowRouter("arrow")
    for ref in engine.registry:
        w = engine.registry.weights(ref)
        r.add(ref.name, adapter_prototypes(w.a, w.b))
    keys = r.feature_keys()
    r.calibrate([engine.prompt_features(checkpoint.tokenizer(t)["input_ids"], keys) for t in NEUTRAL_PROMPTS])
    return r


def test_arrow_routes_held_out_demo_prompts(engine, demo_arrow, checkpoint):
    rows = [json.loads(line) for line in (DEMO / "eval.jsonl").read_text().splitlines()][::5]  # 40, all 4 tasks
    keys = demo_arrow.feature_keys()
    hits = 0
    for row in rows:
        d = demo_arrow.route(engine.prompt_features(checkpoint.tokenizer(row["prompt"])["input_ids"], keys))
        hits += d.adapter == row["task"]
    assert hits >= 0.95 * len(rows)


def test_arrow_falls_back_on_off_task_prompts(engine, demo_arrow, checkpoint):
    for text in ["Hello, how are you today?", "Write a poem about the sea.", "Who wrote Hamlet?"]:
        d = demo_arrow.route(engine.prompt_features(checkpoint.tokenizer(text)["input_ids"], demo_arrow.feature_keys()))
        assert d.fell_back and d.adapters == (), (text, d.scores)
