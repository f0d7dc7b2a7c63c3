"""The demo tasks' held-out prompts never reach training or the router's example prompts."""

import json
from pathlib import Path

import pytest

from bench.adapter_tools.demo_tasks import TASKS
from bench.adapter_tools.train_demo import stream, unique_examples

DEMO = Path(__file__).parents[3] / "server" / "adapters" / "demo"


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_training_stream_skips_held_out_prompts(task):
    held_out = {p for p, _ in unique_examples(task, 1000, 50)}
    data = stream(task, 0, held_out)
    assert not any(next(data)[0] in held_out for _ in range(500))


def test_shipped_eval_set_and_examples_are_disjoint():
    if not (DEMO / "eval.jsonl").is_file():
        pytest.skip("no demo adapters (python -m bench.adapter_tools.train_demo)")
    rows = [json.loads(line) for line in (DEMO / "eval.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {t.name for t in TASKS}
    held_out = {r["prompt"] for r in rows}
    assert len(held_out) == len(rows)
    for task in TASKS:
        meta = json.loads((DEMO / "adapters" / task.name / "loraplex.json").read_text())
        assert meta["description"] and len(meta["examples"]) == 10
        assert not held_out & set(meta["examples"])
