"""The validation adapter set (bench/validation/) is what issue 17 asks for, and disjoint from what made it."""

import json
from pathlib import Path

import pytest

from bench.adapter_tools.demo_tasks import TASKS as DEMO_TASKS
from bench.adapter_tools.train_demo import stream, unique_examples
from bench.adapter_tools.validation_tasks import CHAINS, TASKS

VAL = Path(__file__).resolve().parents[2] / "bench" / "validation"
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}


def _configs() -> dict[str, dict]:
    return {t.name: json.loads((VAL / "adapters" / t.name / "adapter_config.json").read_text()) for t in TASKS}


def test_six_or_more_adapters_of_varied_shape_unlike_the_demo_tasks():
    configs = _configs()
    assert len(configs) >= 6 and not {t.name for t in TASKS} & {t.name for t in DEMO_TASKS}
    ranks = {c["r"] for c in configs.values()}
    assert min(ranks) == 4 and max(ranks) == 64
    targets = [set(c["target_modules"]) for c in configs.values()]
    assert any(t.isdisjoint(ATTENTION) for t in targets) and any(t <= ATTENTION for t in targets)
    assert len({frozenset(t) for t in targets}) == len(targets)
    size = sum(p.stat().st_size for p in (VAL / "adapters").rglob("adapter_model.safetensors"))
    assert size < 25 * 2**20


def test_held_out_and_composite_prompts_reach_neither_training_nor_router_examples():
    rows = [json.loads(line) for line in (VAL / "eval.jsonl").read_text().splitlines()]
    chains = [json.loads(line) for line in (VAL / "composite.jsonl").read_text().splitlines()]
    assert {tuple(c["tasks"]) for c in chains} == set(CHAINS) and len(chains) >= 20
    for task in TASKS:
        held = {r["prompt"] for r in rows if r["task"] == task.name}
        held |= {c["prompt"] for c in chains if c["tasks"][0] == task.name}
        held |= {c["template"].format(prev=c["answer1"]) for c in chains if c["tasks"][1] == task.name}
        assert len([r for r in rows if r["task"] == task.name]) == 30
        examples = json.loads((VAL / "adapters" / task.name / "loraplex.json").read_text())["examples"]
        assert not held & set(examples)
        data = stream(task, 0, held)
        assert not any(next(data)[0] in held for _ in range(300))


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_generators_are_deterministic(task):
    assert unique_examples(task, 5, 10) == unique_examples(task, 5, 10)
