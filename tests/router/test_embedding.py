"""The embedding router on the demo adapters' own examples, scored on held-out prompts."""

import json
import math
from pathlib import Path

import pytest

from router.embedding import EmbeddingRouter
from server.adapters.metadata import METADATA_FILE, parse_metadata
from server.model.loader import load_weights

DEMO = Path(__file__).resolve().parents[2] / "server" / "adapters" / "demo"


@pytest.fixture(scope="module")
def router(checkpoint):
    r = EmbeddingRouter("auto", load_weights(checkpoint.directory)["model.embed_tokens.weight"])
    tok = checkpoint.tokenizer
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


def test_remove_and_default(router, checkpoint):
    ids = checkpoint.tokenizer("Review: lovely soup.\nSentiment:")["input_ids"]
    assert router.route(ids).adapter == "sentiment"
    router.remove("sentiment")
    assert router.route(ids).adapter != "sentiment"
    router.default = "arithmetic"
    assert router.route(checkpoint.tokenizer("Hello there")["input_ids"]).adapter == "arithmetic"


def test_an_example_of_no_tokens_is_skipped(checkpoint):
    table = load_weights(checkpoint.directory)["model.embed_tokens.weight"]
    r = EmbeddingRouter("auto", table, threshold=-1.0)
    tok = checkpoint.tokenizer
    r.add("empty", [[]])  # nothing left to embed: not added at all
    r.add("math", [[], tok("What is 2 + 2?")["input_ids"]])
    r.add("text", [tok("Reverse the word: hello")["input_ids"]])
    d = r.route(tok("What is 3 + 5?")["input_ids"])
    assert d.adapter == "math" and all(math.isfinite(s) for s in d.scores.values()), d.scores
