"""Grammars in the engine: constrained rows follow their grammar, other rows' greedy outputs never change."""

import json

import pytest
import torch

from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams
from server.structured import GrammarCompiler, GrammarError, GrammarSpec, apply_masks, start_masks
from server.structured.masks import MASKED

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


@pytest.fixture(scope="module")
def compiler(checkpoint):
    return GrammarCompiler(checkpoint.tokenizer, checkpoint.config.vocab_size, {checkpoint.tokenizer.eos_token_id})


def _prompt(tokenizer, text: str) -> list[int]:
    msgs = [{"role": "user", "content": text}]
    return tokenizer(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]


def _run(engine, reqs: list[EngineRequest]) -> dict[str, tuple[list[int], str]]:
    out: dict[str, tuple[list[int], str]] = {r.request_id: ([], "") for r in reqs}
    for r in reqs:
        engine.add_request(r)
    while engine.has_work():
        for d in engine.step():
            ids, text = out[d.request_id]
            out[d.request_id] = (ids + d.token_ids, text + d.text)
    return out


def test_masks_touch_only_constrained_rows(compiler):
    g = compiler.compile(GrammarSpec.choice(["yes", "no"]))
    states = [None, g.matcher(), None]
    logits = torch.randn(3, compiler.vocab_size)  # (S, V)
    before = logits.clone()
    apply_masks(logits, start_masks(states))
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    allowed = (logits[1] > MASKED).nonzero().flatten()
    assert 0 < len(allowed) < 10 and torch.equal(logits[1, allowed], before[1, allowed])
    assert start_masks([None, None]) is None


def test_compile_errors_name_the_problem_and_hits_are_cached(compiler):
    with pytest.raises(GrammarError, match="Unsupported type"):
        compiler.compile(GrammarSpec.json_schema({"type": "nonsense"}))
    with pytest.raises(GrammarError, match="regex"):
        compiler.compile(GrammarSpec("regex", "(("))
    a = compiler.compile(GrammarSpec.json_schema(SCHEMA))
    n = compiler.compiles
    assert compiler.compile(GrammarSpec.json_schema(json.loads(json.dumps(SCHEMA)))) is a
    assert compiler.compiles == n


@pytest.mark.slow
def test_constrained_rows_leave_plain_rows_unchanged(make_engine, checkpoint, compiler):
    tok = checkpoint.tokenizer
    greedy = SamplingParams(max_tokens=24, temperature=0)
    plain = [EngineRequest(f"plain-{i}", _prompt(tok, q), greedy)
             for i, q in enumerate(["What is the capital of France?", "Name three colors.", "Count to five."])]
    alone = _run(make_engine(), plain)

    json_g = compiler.compile(GrammarSpec.json_schema(SCHEMA))
    choice_g = compiler.compile(GrammarSpec.choice(["red", "green", "blue"]))
    sampled = SamplingParams(max_tokens=48, temperature=0.8, seed=3, n=2)
    constrained = [
        EngineRequest("json", _prompt(tok, "Describe a person as JSON."), SamplingParams(max_tokens=48, temperature=0),
                      grammar=json_g),
        EngineRequest("json-n2", _prompt(tok, "A person, as JSON."), sampled, grammar=json_g),
        EngineRequest("choice", _prompt(tok, "Pick a color."), SamplingParams(max_tokens=8, temperature=0),
                      grammar=choice_g),
    ]
    plain_again = [EngineRequest(f"{r.request_id}-again", r.prompt_ids, r.params) for r in plain]
    mixed = _run(make_engine(), [*constrained[:2], *plain_again, constrained[2]])
    for r in plain:
        assert mixed[f"{r.request_id}-again"][0] == alone[r.request_id][0]
    doc = json.loads(mixed["json"][1])
    assert set(doc) == {"name", "age"} and isinstance(doc["age"], int)
    assert mixed["choice"][1] in {"red", "green", "blue"}
