"""Greedy parity with transformers `generate`, fp32 token for token, bf16 within a documented tolerance."""

import pytest
import torch

from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams
from tests.server.model.prompts import PROMPTS

NEW_TOKENS = 24
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)


def hf_greedy(model, ids: list[int], n: int = NEW_TOKENS) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, attention_mask=torch.ones(1, len(ids)))
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def prompt_ids(checkpoint):
    tok = checkpoint.tokenizer
    messages = [{"role": "user", "content": "Name a primary colour."}]
    chat = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = [tok(p)["input_ids"] for p in PROMPTS] + [tok(chat, add_special_tokens=False)["input_ids"]]
    assert len(ids) >= 20
    assert any(len(i) > 16 for i in ids) and any(len(i) < 8 for i in ids)  # over one block, and short
    return ids


@pytest.fixture(scope="module")
def reference(hf_fp32, prompt_ids):
    with torch.inference_mode():
        return [hf_greedy(hf_fp32, ids) for ids in prompt_ids]


def test_fp32_one_at_a_time_matches_transformers(make_engine, prompt_ids, reference):
    engine = make_engine()
    for ids, ref in zip(prompt_ids, reference, strict=True):
        assert engine.generate([ids], GREEDY)[0] == ref


def test_fp32_staggered_batch_matches_transformers(make_engine, prompt_ids, reference):
    engine = make_engine(max_batch_tokens=96)  # small budget: prefills are chunked and mix with decodes
    outputs: dict[str, list[int]] = {}
    pending = list(enumerate(prompt_ids))
    mixed_steps = 0
    while pending or engine.has_work():
        if pending:
            i, ids = pending.pop(0)
            engine.add_request(EngineRequest(f"p{i}", ids, GREEDY))
        for d in engine.step():
            outputs.setdefault(d.request_id, []).extend(d.token_ids)
        mixed_steps += bool(engine.last_step.prefills and engine.last_step.decodes)
    assert mixed_steps > 0
    assert [outputs[f"p{i}"] for i in range(len(prompt_ids))] == reference


def test_preemption_keeps_greedy_outputs(make_engine, prompt_ids, reference):
    engine = make_engine(pool_mb=4)  # 5 pages of 16 tokens: far too few for 21 requests at once
    assert engine.pool.book.num_pages <= 6
    short = [(ids, ref) for ids, ref in zip(prompt_ids, reference, strict=True) if len(ids) + NEW_TOKENS <= 64]
    outs = engine.generate([ids for ids, _ in short], GREEDY)
    assert engine.scheduler.num_preemptions > 0
    assert outs == [ref for _, ref in short]
    s = engine.pool.book.stats()
    assert s.kv == 0 and s.free + s.cached == s.total  # nothing held; full blocks stay cached
