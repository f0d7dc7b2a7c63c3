"""Per-request timing and token counts, fed delta by delta and reported to Metrics once at the end."""

import time
from dataclasses import dataclass, field

from server.api.metrics import Metrics
from server.engine.outputs import SequenceDelta


@dataclass(slots=True)
class _SeqTimes:
    first: float  # monotonic seconds of its first token
    last: float
    tokens: int


@dataclass(slots=True)
class RequestStats:
    metrics: Metrics
    model_label: str  # adapter name, or the base model's name
    prompt_tokens: int  # once per prompt, whatever n is
    start: float = field(default_factory=time.monotonic)  # admission
    first_token: float | None = None
    queue_s: float | None = None
    seqs: dict[int, _SeqTimes] = field(default_factory=dict)  # by choice index
    cached: dict[int, int] = field(default_factory=dict)  # prompt tokens from the prefix cache, by first choice
    _reported: bool = False

    @property
    def completion_tokens(self) -> int:
        return sum(s.tokens for s in self.seqs.values())

    @property
    def cached_tokens(self) -> int:
        """Cached prompt tokens, once per prompt (as prompt_tokens): its first choice's hit."""
        return sum(self.cached.values())

    def on_delta(self, choice: int, delta: SequenceDelta) -> None:
        if self.queue_s is None and delta.queue_s is not None:
            self.queue_s = delta.queue_s
        if delta.index == 0 and delta.num_cached_tokens is not None:
            self.cached[choice] = delta.num_cached_tokens
        if not delta.token_ids:
            return
        now = time.monotonic()
        if self.first_token is None:
            self.first_token = now
        seq = self.seqs.get(choice)
        if seq is None:
            self.seqs[choice] = _SeqTimes(now, now, len(delta.token_ids))
        else:
            seq.last = now
            seq.tokens += len(delta.token_ids)

    def report(self, completed: bool) -> None:
        """Once: token counters always (the work was done); latencies only for requests that completed."""
        if self._reported:
            return
        self._reported = True
        m = self.metrics
        label = m.adapter_labels.label(self.model_label)
        m.adapter_requests.labels(label).inc()
        m.prompt_tokens.inc(self.prompt_tokens)
        m.generation_tokens.inc(self.completion_tokens)
        m.adapter_generation_tokens.labels(label).inc(self.completion_tokens)
        if self.cached:  # the prompts were looked up in the prefix cache
            m.prefix_queried_tokens.labels(label).inc(self.prompt_tokens)
            m.prefix_hit_tokens.labels(label).inc(self.cached_tokens)
        if not completed:
            return
        end = max((s.last for s in self.seqs.values()), default=time.monotonic())
        m.e2e_latency.observe(end - self.start)
        if self.first_token is not None:
            m.time_to_first_token.observe(self.first_token - self.start)
        if self.queue_s is not None:
            m.queue_time.observe(self.queue_s)
        for s in self.seqs.values():
            if s.tokens > 1:
                m.time_per_output_token.observe((s.last - s.first) / (s.tokens - 1))
