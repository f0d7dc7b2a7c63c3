"""Every error: its status, an OpenAI error body, and a server that still answers the next request."""

import json

import httpx
import openai
import pytest

from tests.server.api.harness import MAX_MODEL_LEN, MAX_TOKENS_CAP, MODEL, Server, wait_until

OK_COMPLETION = {"model": MODEL, "prompt": "Hello", "max_tokens": 2}
OK_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
LONG_PROMPT = "word " * (MAX_MODEL_LEN + 10)


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    if param is not None:
        assert err["param"] == param
    return err


def assert_still_serving(server: Server, headers: dict | None = None) -> None:
    r = httpx.post(f"{server.url}/v1/completions", json=OK_COMPLETION, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


BAD_COMPLETIONS = [
    ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"n": 0}, "n"),
    ({"n": 1000}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": MAX_TOKENS_CAP + 1}, "max_tokens"),
    ({"logprobs": 21}, "logprobs"),
    ({"seed": 2**70}, "seed"),
    ({"stop": [""]}, None),
    ({"stop": 5}, "stop"),
    ({"best_of": 3}, "best_of"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"min_p": 1.5}, "min_p"),
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ({"logit_bias": {"42": 101}}, "logit_bias"),
    ({"logit_bias": {"forty": 1}}, "logit_bias"),
    ({"logit_bias": {"99999999": 1}}, None),  # past the vocabulary
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"stop_token_ids": [10**8]}, None),
    ({"prompt_logprobs": 21}, "prompt_logprobs"),
    ({"max_tokens": 0, "logprobs": 1}, "max_tokens"),  # 0 only with echo
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [1, -5]}, "prompt"),
    ({"prompt": {"text": "hi"}}, "prompt"),
    ({"prompt": [10**9]}, None),  # past the vocabulary
    ({"prompt": ""}, None),
    ({"prompt": LONG_PROMPT}, "prompt"),
    ({"max_tokens": MAX_TOKENS_CAP, "prompt": "word " * (MAX_MODEL_LEN - 100)}, "max_tokens"),
    ({"model": None}, "model"),
]


@pytest.mark.parametrize(("patch", "param"), BAD_COMPLETIONS, ids=[json.dumps(p)[:40] for p, _ in BAD_COMPLETIONS])
def test_bad_completion_parameters_are_400(server, patch, param):
    r = httpx.post(f"{server.url}/v1/completions", json={**OK_COMPLETION, **patch}, timeout=60)
    assert_error(r, 400, param)
    assert_still_serving(server)


BAD_CHATS = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, None),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None),
    ({"messages": [{"role": "user", "content": LONG_PROMPT}]}, "messages"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"echo": True}, "echo"),
    ({"prompt_logprobs": 1}, "prompt_logprobs"),
    ({"tools": [{"type": "retrieval"}]}, "tools"),  # only function tools
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"guided_regex": "(("}, "guided_regex"),  # a grammar that cannot compile
    ({"max_completion_tokens": MAX_TOKENS_CAP + 1}, "max_tokens"),
]


@pytest.mark.parametrize(("patch", "param"), BAD_CHATS, ids=[json.dumps(p)[:40] for p, _ in BAD_CHATS])
def test_bad_chat_parameters_are_400(server, patch, param):
    r = httpx.post(f"{server.url}/v1/chat/completions", json={**OK_CHAT, **patch}, timeout=60)
    assert_error(r, 400, param)
    assert_still_serving(server)


@pytest.mark.parametrize(
    "content", [b"{not json", b"[1, 2]", b"", "\u00ff".encode("latin-1")], ids=["broken", "array", "empty", "binary"]
)
def test_unparseable_bodies_are_400(server, content):
    r = httpx.post(
        f"{server.url}/v1/completions", content=content, headers={"content-type": "application/json"}, timeout=60
    )
    assert_error(r, 400)
    assert_still_serving(server)


def test_prompt_longer_than_the_context_is_400_through_the_client(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().completions.create(model=MODEL, prompt=LONG_PROMPT, max_tokens=2)
    assert e.value.status_code == 400 and e.value.code == "context_length_exceeded"
    assert str(MAX_MODEL_LEN) in e.value.message
    assert_still_serving(server)


def test_unknown_model_is_404(server):
    with pytest.raises(openai.NotFoundError) as e:
        server.client().chat.completions.create(model="no-such-model", messages=OK_CHAT["messages"])
    assert e.value.code == "model_not_found" and e.value.param == "model"
    err = assert_error(httpx.post(f"{server.url}/v1/completions", json={**OK_COMPLETION, "model": "x"}), 404, "model")
    assert err["code"] == "model_not_found"
    assert_still_serving(server)


def test_unknown_route_is_404_with_an_error_body(server):
    assert_error(httpx.get(f"{server.url}/v1/nothing-here"), 404)
    assert_error(httpx.get(f"{server.url}/v1/completions"), 405)
    assert_still_serving(server)


KEY = {"Authorization": "Bearer sesame"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}],
                         ids=["none", "wrong", "no-scheme"])
def test_missing_or_wrong_key_is_401(strict_server, headers):
    r = httpx.post(f"{strict_server.url}/v1/completions", json=OK_COMPLETION, headers=headers)
    err = assert_error(r, 401)
    assert err["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
    assert_error(httpx.get(f"{strict_server.url}/v1/models", headers=headers), 401)
    assert_still_serving(strict_server, KEY)


def test_the_key_opens_v1_and_metrics_and_health_stays_open(strict_server):
    with pytest.raises(openai.AuthenticationError):
        strict_server.client("wrong").models.list()
    assert [m.id for m in strict_server.client("sesame").models.list().data] == [MODEL]
    assert httpx.get(f"{strict_server.url}/health").status_code == 200
    assert httpx.get(f"{strict_server.url}/metrics").status_code == 401
    assert httpx.get(f"{strict_server.url}/metrics", headers=KEY).status_code == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_is_413(strict_server, chunked):
    body = json.dumps({**OK_COMPLETION, "prompt": "x" * 5000}).encode()
    content = iter([body[:3000], body[3000:]]) if chunked else body
    r = httpx.post(
        f"{strict_server.url}/v1/completions", content=content, headers={**KEY, "content-type": "application/json"}
    )
    assert assert_error(r, 413)["code"] == "request_too_large"
    assert_still_serving(strict_server, KEY)


def test_full_queue_is_429_with_retry_after(strict_server):
    """One sequence runs at a time and one request may wait: a third request is refused."""
    client = strict_server.client("sesame")
    long = dict(model=MODEL, prompt="Count: 1, 2, 3,", max_tokens=MAX_TOKENS_CAP, stream=True,
                extra_body={"ignore_eos": True})
    running = client.completions.create(**long)
    next(iter(running))  # it has a token: it holds the only seat
    waiting = client.completions.create(**long)  # headers back: admitted, and it cannot start before `running` ends
    try:
        r = httpx.post(f"{strict_server.url}/v1/completions", json=OK_COMPLETION, headers=KEY)
        assert assert_error(r, 429)["code"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 0
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
    finally:
        running.close()
        waiting.close()
    wait_until(lambda: strict_server.sample("loraplex_requests_waiting") == 0, what="the aborts to land")
    assert_still_serving(strict_server, KEY)
