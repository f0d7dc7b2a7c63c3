"""The openai client against a live server: echo with logprobs (prompt first, its first token None), vLLM's
prompt_logprobs, and the penalties / logit_bias / min_tokens / stop_token_ids a vLLM user sends."""

import pytest
import torch

from tests.server.api.harness import MODEL

PROMPT = "The capital of France is"
COUNT = "Count: 1, 2, 3, 4,"
GGUF_ATOL = 2e-3  # the main server runs the GGUF blocks; fp32 parity to 1e-4 is test_lm_eval's and the engine's


@pytest.fixture(scope="module")
def reference(hf_fp32, checkpoint):
    """Prompt -> (ids, fp32 log-softmax of each next prompt token)."""

    def ref(prompt: str) -> tuple[list[int], list[float]]:
        ids = checkpoint.tokenizer(prompt)["input_ids"]
        with torch.inference_mode():
            logp = torch.log_softmax(hf_fp32(torch.tensor([ids])).logits[0, :-1].float(), -1)
        return ids, logp.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1).tolist()

    return ref


def test_echo_with_logprobs_puts_the_prompt_first(server, reference, checkpoint):
    client = server.client()
    ids, want = reference(PROMPT)
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2)
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2, echo=True)
    c, lp = r.choices[0], r.choices[0].logprobs
    assert c.text == PROMPT + plain.choices[0].text
    assert lp.tokens == [checkpoint.tokenizer.decode([t]) for t in ids] + plain.choices[0].logprobs.tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(want, abs=GGUF_ATOL)
    assert lp.token_logprobs[len(ids) :] == plain.choices[0].logprobs.token_logprobs
    assert all(len(t) >= 1 and lp.tokens[i] in t for i, t in enumerate(lp.top_logprobs[1:], 1))
    assert lp.text_offset[: 2] == [0, len(lp.tokens[0])]


def test_echo_with_max_tokens_0_is_the_prompt_alone(server, reference):
    ids, want = reference(COUNT)
    r = server.client().completions.create(model=MODEL, prompt=COUNT, max_tokens=0, echo=True, logprobs=0)
    c = r.choices[0]
    assert c.text == COUNT and c.finish_reason == "length" and len(c.logprobs.tokens) == len(ids)
    assert c.logprobs.token_logprobs[0] is None
    assert c.logprobs.token_logprobs[1:] == pytest.approx(want, abs=GGUF_ATOL)


def test_echo_streamed_and_without_logprobs(server):
    client = server.client()
    whole = client.completions.create(model=MODEL, prompt=[PROMPT, COUNT], max_tokens=4, temperature=0, echo=True)
    assert whole.choices[0].text.startswith(PROMPT) and whole.choices[1].text.startswith(COUNT)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text


def test_vllm_prompt_logprobs(server, reference):
    ids, want = reference(PROMPT)
    r = server.client().completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0,
                                           extra_body={"prompt_logprobs": 2})
    plp = r.choices[0].model_extra["prompt_logprobs"]
    assert plp[0] is None and len(plp) == len(ids)
    for t, entry, w in zip(ids[1:], plp[1:], want, strict=True):
        assert entry[str(t)]["logprob"] == pytest.approx(w, abs=GGUF_ATOL)
        assert len(entry) in (2, 3) and sorted(e["rank"] for e in entry.values())[0] == 1


def greedy(client, prompt: str, max_tokens: int = 8, **kw):
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, **kw)


def test_logit_bias_and_stop_token_ids(server, checkpoint):
    client, tok = server.client(), checkpoint.tokenizer
    free = greedy(client, COUNT, logprobs=0)
    ids = tok(free.choices[0].text, add_special_tokens=False)["input_ids"]  # digits and commas: one way to split
    assert len(ids) == free.usage.completion_tokens and tok.decode(ids) == free.choices[0].text
    forced = tok(" banana")["input_ids"][0]
    assert greedy(client, COUNT, 4, logit_bias={str(forced): 100}).choices[0].text == tok.decode([forced] * 4)
    banned = greedy(client, COUNT, 1, logit_bias={str(ids[0]): -100}, logprobs=0)
    assert banned.choices[0].logprobs.tokens[0] != free.choices[0].logprobs.tokens[0]
    stopped = greedy(client, COUNT, extra_body={"stop_token_ids": [ids[2]]})
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == ids.index(ids[2]) + 1


def test_penalties_change_greedy_text_and_seeds_hold(server):
    client = server.client()
    prompts = [COUNT, PROMPT, "Once upon a time", "def fibonacci(n):"]
    free = [c.text for c in greedy(client, prompts, 16).choices]
    for kw in (dict(frequency_penalty=2.0), dict(presence_penalty=2.0), dict(extra_body={"repetition_penalty": 2.0})):
        assert [c.text for c in greedy(client, prompts, 16, **kw).choices] != free, kw
    every = dict(temperature=0.9, top_p=0.95, seed=11, presence_penalty=0.5, frequency_penalty=0.5,
                 logit_bias={"28": 2},
                 extra_body={"repetition_penalty": 1.2, "min_p": 0.05, "min_tokens": 4, "top_k": 40})
    a, b = (client.completions.create(model=MODEL, prompt=COUNT, max_tokens=12, **every) for _ in range(2))
    assert a.choices[0].text == b.choices[0].text and a.usage.completion_tokens >= 4


def test_min_tokens_on_chat(server):
    messages = [{"role": "user", "content": "Say hi."}]
    client = server.client()
    free = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=60, temperature=0)
    assert free.choices[0].finish_reason == "stop"
    held = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=60, temperature=0,
                                          extra_body={"min_tokens": free.usage.completion_tokens + 5})
    assert held.usage.completion_tokens >= free.usage.completion_tokens + 5
