"""The embedding router on the demo adapters' own examples, scored on held-out prompts; its fallback rule."""

import json
import math
from pathlib import Path

import pytest
import torch

from router.arrow import NEUTRAL_PROMPTS
from router.embedding import EmbeddingOptions, EmbeddingRouter
from router.stats import prediction_bar, t_quantile
from server.adapters.metadata import METADATA_FILE, parse_metadata
from server.model.loader import load_weights

DEMO = Path(__file__).resolve().parents[2] / "server" / "adapters" / "demo"


@pytest.fixture(scope="module")
def router(checkpoint):
    tok = checkpoint.tokenizer
    r = EmbeddingRouter("auto", load_weights(checkpoint.directory)["model.embed_tokens.weight"],
                        generic=[tok(t)["input_ids"] for t in NEUTRAL_PROMPTS])
    for folder in sorted((DEMO / "adapters").iterdir()):
        meta = parse_metadata(folder.name, (folder / METADATA_FILE).read_bytes())
        r.add(folder.name, [tok(t)["input_ids"] for t in (*meta.examples, meta.description) if t])
    return r


def test_routes_held_out_prompts_to_their_task(router, checkpoint):
    rows = [json.loads(line) for line in (DEMO / "eval.jsonl").read_text().splitlines()]
    tok = checkpoint.tokenizer
    hits = sum(router.route(tok(r["prompt"])["input_ids"]).adapter == r["task"] for r in rows)
    assert hits >= 0.95 * len(rows)


def test_off_task_prompts_fall_back_to_the_base(router, checkpoint):
    for text in ["Hello, how are you today?", "Write a poem about the sea."]:
        d = router.route(checkpoint.tokenizer(text)["input_ids"])
        assert d.fell_back and d.adapter is None and d.router == "auto"


def test_held_out_prompts_clear_their_adapters_generic_bar(router, checkpoint):
    """Each adapter is calibrated on the generic prompts; the bar is the t prediction bound over 4 adapters."""
    assert router.options.fallback == "generic" and router._built().bar == pytest.approx(prediction_bar(0.05, 4, 8))
    rows = [json.loads(line) for line in (DEMO / "eval.jsonl").read_text().splitlines()][::10]
    tok = checkpoint.tokenizer
    assert min(router.z(r["task"], tok(r["prompt"])["input_ids"]) for r in rows) > router._built().bar


def test_remove_and_default(router, checkpoint):
    ids = checkpoint.tokenizer("Review: lovely soup.\nSentiment:")["input_ids"]
    assert router.route(ids).adapter == "sentiment"
    router.remove("sentiment")
    assert router.route(ids).adapter != "sentiment"
    router.default = "arithmetic"
    assert router.route(checkpoint.tokenizer("Hello there")["input_ids"]).adapter == "arithmetic"


def test_an_example_of_no_tokens_is_skipped(checkpoint):
    table = load_weights(checkpoint.directory)["model.embed_tokens.weight"]
    r = EmbeddingRouter("auto", table, EmbeddingOptions(fallback="off"))
    tok = checkpoint.tokenizer
    r.add("empty", [[]])  # nothing left to embed: not added at all
    r.add("math", [[], tok("What is 2 + 2?")["input_ids"]])
    r.add("text", [tok("Reverse the word: hello")["input_ids"]])
    d = r.route(tok("What is 3 + 5?")["input_ids"])
    assert d.adapter == "math" and all(math.isfinite(s) for s in d.scores.values()), d.scores


def _draw(pool: list[int], n: int, seed: int) -> list[int]:
    return [pool[i] for i in torch.randint(len(pool), (n,), generator=torch.Generator().manual_seed(seed)).tolist()]


def test_generic_rule_routes_weak_but_significant_similarity_that_the_fixed_threshold_drops():
    """Toy tokens: prompts of a task share 4 of 12 tokens with its examples, so on-task similarity stays near
    0.35 (under the 0.45 fitted on the demo adapters) yet far above the adapter's own generic-text scores."""
    table = torch.randn(200, 64, generator=torch.Generator().manual_seed(0))
    generic, task_a, task_b = list(range(100)), [100, 101], [150, 151]
    calibration = [_draw(generic, 12, 1000 + i) for i in range(8)]
    on_task = [_draw(task_a, 4, 500 + i) + _draw(generic, 8, 600 + i) for i in range(20)]
    off_task = [_draw(generic, 12, 700 + i) for i in range(20)]
    routed = {}
    for fallback in ("generic", "threshold"):
        r = EmbeddingRouter("auto", table, EmbeddingOptions(fallback=fallback), calibration)
        r.add("a", [_draw(task_a, 4, i) + _draw(generic, 8, 50 + i) for i in range(10)])
        r.add("b", [_draw(task_b, 4, 100 + i) + _draw(generic, 8, 150 + i) for i in range(10)])
        routed[fallback] = (sum(r.route(p).adapter == "a" for p in on_task),
                            sum(r.route(p).fell_back for p in off_task))
    assert routed["generic"][0] >= 18 and routed["generic"][1] >= 19, routed
    assert routed["threshold"][0] <= 2 and routed["threshold"][1] == 20, routed


def test_calibration_follows_the_adapter_set():
    """The centring moves when adapters come and go: the generic statistics and the bar are rebuilt."""
    table = torch.randn(60, 16, generator=torch.Generator().manual_seed(1))
    r = EmbeddingRouter("auto", table, generic=[[i, i + 1, i + 2] for i in range(0, 24, 3)])
    r.add("a", [[40, 41], [40, 42]])
    r.add("b", [[50, 51], [50, 52]])
    first = r._built()
    assert set(first.generic) == {"a", "b"} and first.bar == pytest.approx(prediction_bar(0.05, 2, 8))
    r.add("c", [[55, 56]])
    assert set(r._built().generic) == {"a", "b", "c"} and r._built().bar > first.bar
    assert r._built().generic["a"] != pytest.approx(first.generic["a"])
    r.remove("c")
    assert all(r._built().generic[a] == pytest.approx(first.generic[a]) for a in "ab")


def test_options_and_the_t_bar():
    assert EmbeddingOptions.parse("") == EmbeddingOptions()
    assert EmbeddingOptions.parse("fallback=threshold, threshold=0.45, k=3") == EmbeddingOptions(
        k=3, fallback="threshold", threshold=0.45)
    for bad in ["k=0", "fallback=never", "alpha=1", "k", "radius=2", "k=x"]:
        with pytest.raises(ValueError):
            EmbeddingOptions.parse(bad)
    with pytest.raises(ValueError, match="generic prompts"):
        EmbeddingRouter("auto", torch.randn(8, 4))  # fallback=generic with nothing to calibrate on
    # Student's t quantiles (tables): t_1(0.975) = 12.706, t_7(0.975) = 2.365, t_7(0.99) = 2.998
    assert [round(t_quantile(p, d), 3) for p, d in [(0.975, 1), (0.975, 7), (0.99, 7)]] == [12.706, 2.365, 2.998]
    assert t_quantile(0.95, 2000) == pytest.approx(1.6449, abs=1e-3)  # -> the normal quantile
