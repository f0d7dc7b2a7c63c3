"""The sampling fields OpenAI and vLLM clients send beyond temperature/top_p, mapped onto SamplingParams."""

from server.api.protocol import CompletionRequest, SamplingRequest


def penalty_fields(body: SamplingRequest) -> dict:
    """SamplingParams keyword arguments: penalties, logit_bias (token id strings -> ints), min_p, min_tokens,
    stop_token_ids. Ranges were checked by the request model; token ids against the vocabulary by the engine."""
    return dict(
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias={int(k): float(v) for k, v in (body.logit_bias or {}).items()},
        min_p=body.min_p,
        min_tokens=body.min_tokens,
        stop_token_ids=list(body.stop_token_ids or []),
    )


def prompt_logprobs_asked(body: CompletionRequest) -> int | None:
    """Top-k per prompt token the response needs: echo with logprobs k (OpenAI), prompt_logprobs k (vLLM)."""
    asked = [k for k in (body.logprobs if body.echo else None, body.prompt_logprobs) if k is not None]
    return max(asked) if asked else None
