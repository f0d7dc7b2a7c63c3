"""The embedding router on the demo adapters' own examples, scored on held-out prompts."""

import json
from pathlib import Path

import pytest

from router.embedding import EmbeddingRouter, read_examples
from server.model.loader import load_weights

DEMO = Path(__file__).resolve().parents[2] / "server" / "adapters" / "demo"


@pytest.fixture(scope="module")
def router(checkpoint):
    r = EmbeddingRouter("auto", load_weights(checkpoint.directory)["model.embed_tokens.weight"])
    tok = checkpoint.tokenizer
    for folder in sorted((DEMO / "adapters").iterdir()):
        r.add(folder.name, [tok(t)["input_ids"] for t in read_examples(folder)])
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


def test_remove_and_default(router, checkpoint):
    ids = checkpoint.tokenizer("Review: lovely soup.\nSentiment:")["input_ids"]
    assert router.route(ids).adapter == "sentiment"
    router.remove("sentiment")
    assert router.route(ids).adapter != "sentiment"
    router.default = "arithmetic"
    assert router.route(checkpoint.tokenizer("Hello there")["input_ids"]).adapter == "arithmetic"
