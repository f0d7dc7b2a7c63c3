"""Mixtures: one request served with the weighted sum of several adapters' deltas, in a mixed batch."""

import pytest

from server.engine.llm_engine import EngineRequest, UnknownAdapter
from server.engine.sampling_params import SamplingParams
from tests.server.model.peft_cases import PROMPTS, N, peft_greedy

MIX_PROMPTS = PROMPTS[:2]
GREEDY = SamplingParams(max_tokens=N, temperature=0, ignore_eos=True)
MIXES = {  # PEFT adapter name -> (adapter, weight) pairs; different ranks, targets and scalings
    "mix_qv_mlp": (("qv8", 0.7), ("mlp16", 0.5)),
    "mix_all3": (("qv8", 0.4), ("all4rs", 0.9), ("mlp16", -0.3)),
}


def run_together(engine, requests: list[EngineRequest]) -> tuple[dict[str, list[int]], int]:
    """Outputs by request id, and the most mixture entries seen in one step (0: no step mixed)."""
    for r in requests:
        engine.add_request(r)
    got: dict[str, list[int]] = {}
    most_entries = 0
    while engine.has_work():
        for d in engine.step():
            got.setdefault(d.request_id, []).extend(d.token_ids)
        info = engine.runner.last_lora.info if engine.runner.last_lora else None
        if info is not None and info.entry_rows is not None:
            most_entries = max(most_entries, info.num_rows)
    return got, most_entries


@pytest.fixture(scope="module")
def mixture_refs(checkpoint, peft_model):
    """PEFT's reference for each mixture: add_weighted_adapter(combination_type="cat") is sum_i w_i * delta_i."""
    for name, pairs in MIXES.items():
        names, weights = zip(*pairs, strict=True)
        peft_model.add_weighted_adapter(list(names), list(weights), name, combination_type="cat")
    tok = checkpoint.tokenizer
    return {(p, name): peft_greedy(peft_model, tok(p)["input_ids"], name) for p in MIX_PROMPTS for name in MIXES}


def test_mixtures_match_peft_weighted_adapter_in_a_mixed_batch(engine_with_adapters, checkpoint, mixture_refs):
    tok = checkpoint.tokenizer
    requests, expect = [], {}
    for i, p in enumerate(MIX_PROMPTS):
        ids = tok(p)["input_ids"]
        for name, pairs in MIXES.items():
            requests.append(EngineRequest(f"{name}-{i}", ids, GREEDY, mixture=pairs))
            expect[f"{name}-{i}"] = mixture_refs[(p, name)]
        requests.append(EngineRequest(f"base-{i}", ids, GREEDY))  # base-only and plain rows share the steps
        requests.append(EngineRequest(f"qv8-{i}", ids, GREEDY, "qv8"))
    got, most_entries = run_together(engine_with_adapters, requests)
    assert most_entries > 0
    for rid, ref in expect.items():
        assert got[rid] == ref, rid
    assert any(got[f"mix_qv_mlp-{i}"] != got[f"qv8-{i}"] for i in range(len(MIX_PROMPTS)))  # mixing changes text


def test_weight_one_mixture_equals_the_adapter_alone(engine_with_adapters, checkpoint):
    """Through the mixture path (entries, gather, index_add), whatever else mixes in the same steps."""
    tok = checkpoint.tokenizer
    requests = []
    for i, p in enumerate(PROMPTS):
        ids = tok(p)["input_ids"]
        requests += [
            EngineRequest(f"alone-{i}", ids, GREEDY, "all4rs"),
            EngineRequest(f"w1-{i}", ids, GREEDY, mixture=(("all4rs", 1.0),)),
            EngineRequest(f"w1-zero-{i}", ids, GREEDY, mixture=(("all4rs", 1.0), ("mlp16", 0.0))),
        ]
    got, most_entries = run_together(engine_with_adapters, requests)
    assert most_entries > 0  # the zero-weight mixtures put every step on the entry path
    for i in range(len(PROMPTS)):
        assert got[f"w1-{i}"] == got[f"alone-{i}"] == got[f"w1-zero-{i}"]


@pytest.mark.parametrize(
    ("mixture", "adapter", "message"),
    [
        ((("qv8", 0.5),), "mlp16", "either one adapter or a mixture"),
        ((("qv8", 0.5), ("qv8", 0.5)), None, "each adapter once"),
        ((("qv8", float("nan")),), None, "finite"),
        (tuple((f"a{i}", 0.1) for i in range(9)), None, "at most 8"),
    ],
)
def test_bad_mixtures_are_refused(engine_with_adapters, mixture, adapter, message):
    with pytest.raises(ValueError, match=message):
        engine_with_adapters.check_request(EngineRequest("bad", [1, 2, 3], GREEDY, adapter, mixture))


def test_unknown_adapter_in_a_mixture_is_refused(engine_with_adapters):
    with pytest.raises(UnknownAdapter, match="nope"):
        engine_with_adapters.check_request(EngineRequest("bad", [1, 2, 3], GREEDY, mixture=(("qv8", 0.5), ("nope", 1))))
