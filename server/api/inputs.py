"""From a validated OpenAI request to engine requests: prompt tokens, sampling parameters, limits."""

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from server.api.errors import BadRequest
from server.api.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest
from server.api.sampling_fields import penalty_fields, prompt_logprobs_asked
from server.api.tool_format import chat_template_inputs
from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the cap


@dataclass(frozen=True, slots=True)
class Limits:
    max_model_len: int  # context: prompt + output tokens
    max_tokens_cap: int  # largest max_tokens a request may ask for
    max_prompts: int = 64  # prompts per /v1/completions request
    max_n: int = 16  # choices per prompt
    max_seqs: int = 128  # prompts x n
    max_stop: int = 4  # stop strings
    max_stop_chars: int = 256  # characters per stop string
    max_logprob_entries: int = 1 << 20  # token logprobs (chosen + top) a response may hold


def check_shape(body: SamplingRequest, num_prompts: int, limits: Limits) -> None:
    """The limits that bound a request's work, checked before any per-prompt work; 400 names the limit."""
    if num_prompts > limits.max_prompts:
        raise BadRequest(f"{num_prompts} prompts in one request; this server allows at most {limits.max_prompts} "
                         "(--max-prompts)", param="prompt", code="too_many_prompts")
    if body.n > limits.max_n:
        raise BadRequest(f"n is {body.n}; this server allows at most {limits.max_n} (--max-n)", param="n")
    if num_prompts * body.n > limits.max_seqs:
        raise BadRequest(f"{num_prompts} prompts x n={body.n} = {num_prompts * body.n} sequences; this server allows "
                         f"at most {limits.max_seqs} per request (--max-seqs-per-request)", param="n")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > limits.max_stop:
        raise BadRequest(f"{len(stop)} stop strings; this server allows at most {limits.max_stop} (--max-stop)",
                         param="stop")
    if any(len(s) > limits.max_stop_chars for s in stop):
        raise BadRequest(f"a stop string is longer than {limits.max_stop_chars} characters (--max-stop-chars)",
                         param="stop")


def check_response_size(reqs: list[EngineRequest], limits: Limits) -> None:
    """max_tokens x sequences x (1 + top logprobs): what the response would hold at most."""
    entries = sum(r.params.max_tokens * r.params.n * (1 + r.params.logprobs) for r in reqs
                  if r.params.logprobs is not None)
    entries += sum(len(r.prompt_ids) * r.params.n * (1 + r.params.prompt_logprobs) for r in reqs
                   if r.params.prompt_logprobs is not None)
    if entries > limits.max_logprob_entries:
        raise BadRequest(f"max_tokens x n x (1 + top logprobs) over all prompts is {entries}; this server allows "
                         f"at most {limits.max_logprob_entries} (--max-logprob-entries): lower max_tokens, n or "
                         "logprobs", param="max_tokens")


def completion_requests(
    body: CompletionRequest, tokenizer: PreTrainedTokenizerBase, limits: Limits, request_id: str,
    adapter: str | None,
) -> list[EngineRequest]:
    """One engine request per prompt; choice i*n+j of the response is sequence j of prompt i."""
    _refuse_unsupported(body)
    if body.suffix:
        raise BadRequest("suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:  # vLLM V1 dropped it too: it cannot stream
        raise BadRequest("best_of other than n is not supported: ask for n choices with logprobs and rank them",
                         param="best_of")
    if body.max_tokens == 0 and not body.echo:
        raise BadRequest("max_tokens must be at least 1 (0 only with echo: the prompt alone)", param="max_tokens")
    check_shape(body, _num_prompts(body.prompt), limits)
    prompts = _prompt_ids(body.prompt, tokenizer)
    # echo with max_tokens 0: one token is generated and left out of the response, as vLLM does
    asked = 1 if body.max_tokens == 0 else body.max_tokens
    reqs = [
        EngineRequest(
            f"{request_id}-{i}", ids,
            _sampling(body, asked, COMPLETIONS_DEFAULT_MAX_TOKENS, len(ids), limits, body.logprobs, "prompt",
                      prompt_logprobs_asked(body)),
            adapter,
        )
        for i, ids in enumerate(prompts)
    ]
    check_response_size(reqs, limits)
    return reqs


def chat_request(
    body: ChatCompletionRequest, tokenizer: PreTrainedTokenizerBase, limits: Limits, request_id: str,
    adapter: str | None,
) -> EngineRequest:
    _refuse_unsupported(body)
    if body.top_logprobs is not None and not body.logprobs:
        raise BadRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    check_shape(body, 1, limits)
    ids = chat_prompt_ids(body, tokenizer)
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = _sampling(body, asked, limits.max_tokens_cap, len(ids), limits, logprobs, "messages")
    req = EngineRequest(f"{request_id}-0", ids, params, adapter)
    check_response_size([req], limits)
    return req


def chat_prompt_ids(body: ChatCompletionRequest, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    messages, extra = chat_template_inputs(body, tokenizer)  # tools rendered (server/api/tool_format.py)
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
    except Exception as e:  # the template is the model's code run on the client's messages: its errors are theirs
        raise BadRequest(f"the chat template refused these messages: {e}", param="messages") from e
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _num_prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> int:
    return 1 if isinstance(prompt, str) or isinstance(prompt[0], int) else len(prompt)


def _prompt_ids(prompt: str | list[str] | list[int] | list[list[int]], tokenizer) -> list[list[int]]:
    if isinstance(prompt, str):
        return [tokenizer(prompt)["input_ids"]]
    if isinstance(prompt[0], str):
        return [tokenizer(p)["input_ids"] for p in prompt]
    if isinstance(prompt[0], int):
        return [list(prompt)]
    return [list(p) for p in prompt]


def _refuse_unsupported(body: SamplingRequest) -> None:
    if isinstance(body, ChatCompletionRequest):  # a chat prompt is the template's text, not the client's
        if body.echo:
            raise BadRequest("echo is not supported on /v1/chat/completions; use /v1/completions", param="echo")
        if body.prompt_logprobs is not None:
            raise BadRequest("prompt_logprobs is not supported on /v1/chat/completions; use /v1/completions",
                             param="prompt_logprobs")


def _sampling(
    body: SamplingRequest, asked: int | None, default: int, prompt_len: int, limits: Limits,
    logprobs: int | None, prompt_param: str, prompt_logprobs: int | None = None,
) -> SamplingParams:
    room = limits.max_model_len - prompt_len
    if room <= 0:
        raise BadRequest(
            f"the prompt has {prompt_len} tokens; this model's context is {limits.max_model_len}",
            param=prompt_param, code="context_length_exceeded",
        )
    if asked is None:
        max_tokens = min(default, limits.max_tokens_cap, room)
    elif asked > limits.max_tokens_cap:
        raise BadRequest(
            f"max_tokens is {asked}; this server allows at most {limits.max_tokens_cap}", param="max_tokens"
        )
    elif asked > room:
        raise BadRequest(
            f"this model's context is {limits.max_model_len} tokens; the prompt has {prompt_len} "
            f"and max_tokens asks for {asked} more",
            param="max_tokens", code="context_length_exceeded",
        )
    else:
        max_tokens = asked
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=max(0, body.top_k or 0),
            seed=body.seed,
            n=body.n,
            stop=stop,
            ignore_eos=body.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            **penalty_fields(body),
        )
    except ValueError as e:  # its messages open with the field's name
        name = str(e).split(" ", 1)[0]
        raise BadRequest(str(e), param=name if name in SamplingParams.__dataclass_fields__ else None) from e
