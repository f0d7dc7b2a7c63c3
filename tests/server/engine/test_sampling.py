"""Sampling features on the real model: seeds, stops, lengths, n, logprobs."""

import torch

from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams

PROMPT = "Write a short poem about the moon:"


def run(engine, requests: list[EngineRequest]) -> dict[tuple[str, int], list]:
    """Deltas per (request, sequence index), all requests admitted together."""
    for r in requests:
        engine.add_request(r)
    got: dict[tuple[str, int], list] = {}
    while engine.has_work():
        for d in engine.step():
            got.setdefault((d.request_id, d.index), []).append(d)
    return got


def ids_of(deltas) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def text_of(deltas) -> str:
    return "".join(d.text for d in deltas)


def test_seeded_sampling_is_the_same_in_any_batch(make_engine, checkpoint):
    tok = checkpoint.tokenizer
    prompt = tok(PROMPT)["input_ids"]
    params = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=1234)
    alone = ids_of(run(make_engine(), [EngineRequest("a", prompt, params)])[("a", 0)])
    others = [
        EngineRequest(f"o{i}", tok(t)["input_ids"], SamplingParams(max_tokens=12 + i, temperature=1.0))
        for i, t in enumerate(["The sun", "A long time ago there lived a king who", "2 + 2 ="])
    ]
    crowded = run(make_engine(max_batch_tokens=64), [others[0], EngineRequest("a", prompt, params), *others[1:]])
    assert ids_of(crowded[("a", 0)]) == alone
    other_seed = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=99)
    assert ids_of(run(make_engine(), [EngineRequest("b", prompt, other_seed)])[("b", 0)]) != alone


def test_greedy_equivalents_top_k_1_and_tiny_top_p(make_engine, checkpoint):
    prompt = checkpoint.tokenizer(PROMPT)["input_ids"]
    greedy = make_engine().generate([prompt], SamplingParams(max_tokens=12, temperature=0))[0]
    for params in (dict(top_k=1), dict(top_p=1e-6)):
        sampled = SamplingParams(max_tokens=12, temperature=1.0, seed=3, **params)
        assert make_engine().generate([prompt], sampled)[0] == greedy


def test_stop_string_cuts_text_and_finishes(make_engine, checkpoint):
    tok = checkpoint.tokenizer
    prompt = tok("Count: 1, 2, 3, 4,")["input_ids"]
    free = run(make_engine(), [EngineRequest("f", prompt, SamplingParams(max_tokens=16, temperature=0))])
    full = text_of(free[("f", 0)])
    assert " 7" in full, full
    got = run(make_engine(), [EngineRequest("s", prompt, SamplingParams(max_tokens=16, temperature=0, stop=[" 7"]))])
    deltas = got[("s", 0)]
    assert text_of(deltas) == full[: full.index(" 7")]
    assert deltas[-1].finish_reason == "stop"


def test_stop_token_ids_max_tokens_and_eos(make_engine, checkpoint):
    tok = checkpoint.tokenizer
    prompt = tok("Count: 1, 2, 3, 4,")["input_ids"]
    engine = make_engine()
    free = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0))[0]
    stop_at = SamplingParams(max_tokens=8, temperature=0, stop_token_ids=[free[3]])
    got = run(engine, [EngineRequest("t", prompt, stop_at)])
    assert ids_of(got[("t", 0)]) == free[: free.index(free[3]) + 1]
    assert got[("t", 0)][-1].finish_reason == "stop"
    got = run(engine, [EngineRequest("l", prompt, SamplingParams(max_tokens=5, temperature=0))])
    assert len(ids_of(got[("l", 0)])) == 5 and got[("l", 0)][-1].finish_reason == "length"
    chat = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], add_generation_prompt=True, tokenize=False)
    got = run(engine, [EngineRequest("e", tok(chat)["input_ids"], SamplingParams(max_tokens=200, temperature=0))])
    ids = ids_of(got[("e", 0)])
    assert got[("e", 0)][-1].finish_reason == "stop" and ids[-1] == tok.eos_token_id and len(ids) < 200


def test_n_sequences_are_independent_and_seeded(make_engine, checkpoint):
    prompt = checkpoint.tokenizer(PROMPT)["input_ids"]
    params = SamplingParams(max_tokens=10, temperature=1.0, n=3, seed=7)
    got = run(make_engine(), [EngineRequest("n", prompt, params)])
    seqs = [ids_of(got[("n", i)]) for i in range(3)]
    assert all(len(s) == 10 for s in seqs) and len({tuple(s) for s in seqs}) == 3
    again = run(make_engine(), [EngineRequest("n", prompt, params)])
    assert [ids_of(again[("n", i)]) for i in range(3)] == seqs


def test_logprobs_are_the_models_log_softmax(make_engine, checkpoint, hf_fp32):
    prompt = checkpoint.tokenizer(PROMPT)["input_ids"]
    got = run(make_engine(), [EngineRequest("p", prompt, SamplingParams(max_tokens=3, temperature=0, logprobs=5))])
    lps = [lp for d in got[("p", 0)] for lp in d.logprobs]
    ids = ids_of(got[("p", 0)])
    with torch.inference_mode():
        logits = hf_fp32(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1]
    ref = torch.log_softmax(logits.float(), -1)  # (3, V)
    for j, lp in enumerate(lps):
        assert lp.token_id == ids[j] == lp.top[0][0]
        assert len(lp.top) == 5 and [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        torch.testing.assert_close(torch.tensor(lp.logprob), ref[j, ids[j]], atol=1e-3, rtol=0)
        top_ref = ref[j].topk(5)
        assert [t for t, _ in lp.top] == top_ref.indices.tolist()


def test_tiny_temperature_is_greedy(make_engine, checkpoint):
    prompt = checkpoint.tokenizer(PROMPT)["input_ids"]
    greedy = make_engine().generate([prompt], SamplingParams(max_tokens=8, temperature=0))[0]
    assert make_engine().generate([prompt], SamplingParams(max_tokens=8, temperature=1e-30, seed=1))[0] == greedy


ALL_ON = dict(
    temperature=0.9, top_p=0.95, top_k=40, min_p=0.02, presence_penalty=0.6, frequency_penalty=0.4,
    repetition_penalty=1.2, logit_bias={13: -5.0, 28: 2.0}, min_tokens=6, stop_token_ids=[30],
)


def test_seeded_sampling_with_every_parameter_is_the_same_in_any_batch(make_engine, checkpoint):
    tok = checkpoint.tokenizer
    prompt = tok(PROMPT)["input_ids"]
    params = SamplingParams(max_tokens=16, seed=77, **ALL_ON)
    alone = ids_of(run(make_engine(), [EngineRequest("a", prompt, params)])[("a", 0)])
    others = [
        EngineRequest(f"o{i}", tok(t)["input_ids"], SamplingParams(max_tokens=10 + i, temperature=1.0, **extra))
        for i, (t, extra) in enumerate([("The sun", {}), ("Once there was a king who", dict(presence_penalty=1.0)),
                                        ("2 + 2 =", dict(seed=5, logit_bias={17: 3.0}))])
    ]
    crowded = run(make_engine(max_batch_tokens=8), [others[0], EngineRequest("a", prompt, params), *others[1:]])
    assert ids_of(crowded[("a", 0)]) == alone and len(alone) >= 6
    assert ids_of(run(make_engine(), [EngineRequest("b", prompt, SamplingParams(max_tokens=16, **ALL_ON))])
                  [("b", 0)]) != alone


def test_min_tokens_holds_back_end_of_sequence(make_engine, checkpoint):
    tok = checkpoint.tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], add_generation_prompt=True, tokenize=False)
    prompt = tok(chat)["input_ids"]
    free = make_engine().generate([prompt], SamplingParams(max_tokens=60, temperature=0))[0]
    assert free[-1] == tok.eos_token_id
    held = make_engine().generate([prompt], SamplingParams(max_tokens=60, temperature=0, min_tokens=len(free) + 3))[0]
    assert len(held) >= len(free) + 3 and tok.eos_token_id not in held[: len(free) + 3]


def test_prompt_logprobs_equal_transformers_over_chunked_prefill(make_engine, checkpoint, hf_fp32):
    tok = checkpoint.tokenizer
    prompt = tok("The quick brown fox jumps over the lazy dog. " * 5 + PROMPT)["input_ids"]
    short = tok("2 + 2 =")["input_ids"]
    assert len(prompt) > 3 * 16
    params = SamplingParams(max_tokens=2, temperature=0, prompt_logprobs=4)
    got = run(make_engine(max_batch_tokens=16), [EngineRequest("p", prompt, params), EngineRequest("s", short, params)])
    with torch.inference_mode():
        for rid, ids in (("p", prompt), ("s", short)):
            plp = got[(rid, 0)][0].prompt_logprobs
            assert plp[0] is None and len(plp) == len(ids)
            assert all(d.prompt_logprobs is None for d in got[(rid, 0)][1:])
            ref = torch.log_softmax(hf_fp32(torch.tensor([ids])).logits[0, :-1].float(), -1)  # (P - 1, V)
            got_lp = torch.tensor([lp.logprob for lp in plp[1:]])
            torch.testing.assert_close(got_lp, ref.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1),
                                       atol=1e-4, rtol=0)
            assert [lp.token_id for lp in plp[1:]] == ids[1:]
            for j, lp in enumerate(plp[1:]):
                torch.testing.assert_close(torch.tensor([v for _, v in lp.top]), ref[j].topk(4).values,
                                           atol=1e-4, rtol=0)


def test_prompt_logprobs_survive_preemption_mid_prefill(make_engine, checkpoint):
    """A sequence preempted between prefill chunks recomputes them; its prompt logprobs are scored once."""
    tok = checkpoint.tokenizer
    prompt = tok("The quick brown fox jumps over the lazy dog. " * 4)["input_ids"]
    params = SamplingParams(max_tokens=2, temperature=0, prompt_logprobs=1)
    whole = run(make_engine(max_batch_tokens=16), [EngineRequest("w", prompt, params)])[("w", 0)]
    engine = make_engine(max_batch_tokens=16)
    engine.add_request(EngineRequest("p", prompt, params))
    deltas = engine.step() + engine.step()  # two chunks of the prompt, nothing sampled yet
    assert not deltas and engine.scheduler.running[0].num_computed == 32
    engine.scheduler._preempt(engine.scheduler.running[0])  # what a full pool does to the newest sequence
    got = run(engine, [])[("p", 0)]
    assert [lp and (lp.token_id, lp.logprob) for lp in got[0].prompt_logprobs] == \
        [lp and (lp.token_id, lp.logprob) for lp in whole[0].prompt_logprobs]
    assert len(got[0].prompt_logprobs) == len(prompt)
