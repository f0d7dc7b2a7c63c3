"""What a request asks of the sampler; validated once, at the boundary."""

import math
from dataclasses import dataclass, field

SAMPLING_EPS = 1e-5  # temperatures below this are greedy: dividing by them overflows float32
MAX_LOGPROBS = 20


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int = 16  # new tokens per sequence
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # drop tokens whose probability is below min_p x the top token's (after temperature)
    seed: int | None = None  # per-request generator: same seed + prompt = same output in any batch
    n: int = 1  # independent sequences sharing the prompt
    stop: list[str] = field(default_factory=list)  # stop strings, excluded from the output text
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0  # end-of-sequence and stop_token_ids are masked until this many tokens are out
    presence_penalty: float = 0.0  # minus this from the logit of every token already in the output
    frequency_penalty: float = 0.0  # minus this x the token's count in the output
    repetition_penalty: float = 1.0  # vLLM/CTRL: logits of prompt or output tokens divided (>0) or multiplied by it
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    logprobs: int | None = None  # None = off; k >= 0 = chosen token's logprob plus the top k
    prompt_logprobs: int | None = None  # None = off; k >= 0 = each prompt token's logprob plus the top k

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1]")
        if self.n < 1:
            raise ValueError("n must be at least 1")
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(self, name)
            if k is not None and not 0 <= k <= MAX_LOGPROBS:
                raise ValueError(f"{name} must be between 0 and {MAX_LOGPROBS}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError("min_tokens must be between 0 and max_tokens")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2]")
        if not (math.isfinite(self.repetition_penalty) and 0 < self.repetition_penalty <= 10):
            raise ValueError("repetition_penalty must be in (0, 10]")
        if any(not (math.isfinite(b) and -100 <= b <= 100) for b in self.logit_bias.values()):
            raise ValueError("logit_bias values must be in [-100, 100]")

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids the request names must exist in the model's vocabulary (ValueError naming the field)."""
        for name, ids in (("stop_token_ids", self.stop_token_ids), ("logit_bias", self.logit_bias)):
            if any(not 0 <= t < vocab_size for t in ids):
                raise ValueError(f"{name}: token ids must be in [0, {vocab_size})")

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1
