"""Messages the engine sends back: one per sequence per step that produced something."""

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token_id, logprob), best first
    rank: int | None = None  # 1 + how many tokens were more likely (prompt logprobs only)


@dataclass(slots=True)
class SequenceDelta:
    """What one sequence of a request produced since its previous delta."""

    request_id: str
    index: int  # which of the request's n sequences
    token_ids: list[int]  # new tokens (stop-string tail already trimmed from text, not from ids)
    text: str  # new detokenized text
    logprobs: list[TokenLogprob] | None  # one per new token when asked for
    finish_reason: str | None  # None while running; "stop" | "length" | "abort" | "error"
    num_prompt_tokens: int
    num_output_tokens: int  # total so far
    error: str | None = None  # set with finish_reason == "error"
    error_code: str | None = None  # "adapter_load_failed" (the request's adapter is broken) | "internal_error"
    queue_s: float | None = None  # seconds from arrival to its first scheduled chunk (None: not yet)
    num_cached_tokens: int | None = None  # prompt tokens served from the prefix cache (None: not looked up)
    # with the first delta, when asked for: one per prompt token, None for the first (nothing predicts it)
    prompt_logprobs: list[TokenLogprob | None] | None = None
