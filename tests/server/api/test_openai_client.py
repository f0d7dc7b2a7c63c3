"""The official openai client against a real server: answers match the engine, streams match answers."""

import asyncio

import pytest

from server.engine.sampling_params import SamplingParams
from tests.server.api.harness import MODEL

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
QUESTION = [{"role": "user", "content": "What is the tallest mountain on Earth?"}]
DIRECT_TOKENS = 16


def chat_ids(tok, messages) -> list[int]:
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]


@pytest.fixture(scope="module")
def direct(make_engine, checkpoint):
    """The engine without HTTP, greedy, all prompts in one batch: token ids -> output ids."""
    tok = checkpoint.tokenizer
    prompts = [tok(p)["input_ids"] for p in PROMPTS] + [chat_ids(tok, QUESTION)]
    outputs = make_engine().generate(prompts, SamplingParams(max_tokens=DIRECT_TOKENS, temperature=0))
    by_prompt = {tuple(p): o for p, o in zip(prompts, outputs, strict=True)}

    def run(ids: list[int], max_tokens: int) -> tuple[str, str]:
        """Greedy text and finish reason for max_tokens: a prefix of the longer run, as greedy decoding goes."""
        assert max_tokens <= DIRECT_TOKENS
        full = by_prompt[tuple(ids)]
        ended = len(full) < DIRECT_TOKENS and len(full) <= max_tokens  # its last token is end-of-sequence
        return tok.decode(full[:max_tokens], skip_special_tokens=True), ("stop" if ended else "length")

    return run


def test_greedy_completions_equal_the_engine(server, direct, checkpoint):
    client = server.client()
    for prompt in PROMPTS:
        r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
        text, reason = direct(checkpoint.tokenizer(prompt)["input_ids"], 12)
        assert r.choices[0].text == text
        assert r.choices[0].finish_reason == reason
        assert r.id.startswith("cmpl-") and r.object == "text_completion" and r.model == MODEL
        assert r.usage.prompt_tokens == len(checkpoint.tokenizer(prompt)["input_ids"])


def test_greedy_chat_equals_the_engine(server, direct, checkpoint):
    r = server.client().chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0)
    ids = chat_ids(checkpoint.tokenizer, QUESTION)
    text, reason = direct(ids, 16)
    assert r.choices[0].message.content == text
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == reason
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_token_id_prompts_equal_string_prompts(server, checkpoint):
    client = server.client()
    ids = checkpoint.tokenizer(PROMPTS[0])["input_ids"]
    by_text = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)


def test_streamed_completion_concatenates_to_the_answer(server):
    client = server.client()
    whole = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=16, temperature=0)
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=PROMPTS[1], max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1 and all(c.object == "text_completion" for c in chunks)
    body, usage_chunk = chunks[:-1], chunks[-1]
    assert "".join(c.choices[0].text for c in body) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason] == [whole.choices[0].finish_reason]
    assert all(c.usage is None for c in body)
    assert usage_chunk.choices == [] and same_counts(usage_chunk.usage, whole.usage)


def same_counts(later, first) -> bool:
    """The same token counts; the later request may find more of its prompt in the prefix cache."""
    skip = {"prompt_tokens_details"}
    return (later.model_dump(exclude=skip) == first.model_dump(exclude=skip)
            and later.prompt_tokens_details.cached_tokens >= first.prompt_tokens_details.cached_tokens)


def test_async_chat_stream_has_openai_shape(server):
    async def main():
        client = server.async_client()
        whole = await client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
        stream = await client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
        return whole, [c async for c in stream]

    whole, chunks = asyncio.run(main())
    first, *content, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(c.choices[0].delta.role is None and c.choices[0].finish_reason is None for c in content)
    assert "".join(c.choices[0].delta.content for c in content) == whole.choices[0].message.content
    assert finish.choices[0].delta.content is None and finish.choices[0].finish_reason == whole.choices[0].finish_reason
    assert usage.choices == [] and same_counts(usage.usage, whole.usage)
    assert all(c.object == "chat.completion.chunk" and c.id == first.id for c in chunks)


def test_no_usage_field_without_include_usage(server):
    chunks = list(server.client().chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=3, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert all("usage" not in c.model_dump(exclude_unset=True) for c in chunks)


def test_n_and_several_prompts_count_usage_once_per_prompt(server, checkpoint):
    r = server.client().completions.create(
        model=MODEL, prompt=PROMPTS[:2], n=2, max_tokens=5, temperature=0.9, seed=7, extra_body={"ignore_eos": True}
    )
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.prompt_tokens == sum(len(checkpoint.tokenizer(p)["input_ids"]) for p in PROMPTS[:2])
    assert r.usage.completion_tokens == 4 * 5


def test_streamed_n_choices_match_the_seeded_answer(server):
    async def main():
        client = server.async_client()
        kw = dict(model=MODEL, messages=QUESTION, n=3, max_tokens=8, temperature=1.0, seed=11)
        whole = await client.chat.completions.create(**kw)
        stream = await client.chat.completions.create(**kw, stream=True)
        return whole, [c async for c in stream]

    whole, chunks = asyncio.run(main())
    texts = {i: "" for i in range(3)}
    roles, finishes = [], []
    for c in chunks:
        (choice,) = c.choices
        roles += [choice.index] if choice.delta.role else []
        finishes += [choice.index] if choice.finish_reason else []
        texts[choice.index] += choice.delta.content or ""
    assert sorted(roles) == sorted(finishes) == [0, 1, 2]
    assert texts == {c.index: c.message.content for c in whole.choices}


def test_same_seed_same_sample(server):
    client = server.client()
    kw = dict(model=MODEL, prompt=PROMPTS[2], max_tokens=10, temperature=1.0, top_p=0.95, seed=1234)
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text


def test_stop_string_cuts_the_text(server, direct, checkpoint):
    prompt = PROMPTS[1]
    full, _ = direct(checkpoint.tokenizer(prompt)["input_ids"], 16)
    stop = full.strip()[3:6]  # a piece from inside the greedy answer
    r = server.client().completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_completion_logprobs(server):
    r = server.client().completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=6, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    assert "".join(lp.tokens) == r.choices[0].text
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0 and 3 <= len(top) <= 4 and top[token] == logprob
        assert max(top.values()) == logprob  # greedy picks the most likely token
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]


def test_chat_logprobs(server):
    r = server.client().chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 2 and item.top_logprobs[0].logprob == item.logprob
        assert item.bytes == list(item.token.encode())


def test_models_lists_the_base(server):
    models = server.client().models.list()
    assert models.data[0].id == MODEL and models.data[0].model_dump()["loraplex_kind"] == "base"
