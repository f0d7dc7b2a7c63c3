"""Engine deltas -> OpenAI bodies: whole responses and SSE chunks, for completions and chat.

Streams follow OpenAI: chat opens each choice with a role delta, content deltas follow, each choice
ends with an empty delta carrying finish_reason; with stream_options.include_usage every chunk has
"usage": null and a last chunk with no choices carries the usage; then `data: [DONE]`.
"""

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from server.api.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessageOut,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    TopLogprob,
    Usage,
)
from server.api.sse import sse
from server.engine.outputs import SequenceDelta, TokenLogprob


@dataclass(slots=True)
class ChoiceState:
    """Everything one choice produced, for the non-streamed response."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: SequenceDelta) -> None:
        self.text.append(delta.text)
        self.logprobs += delta.logprobs or []
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason


class _Renderer:
    def __init__(
        self, request_id: str, created: int, model: str, tokenizer: PreTrainedTokenizerBase, include_usage: bool,
        want_logprobs: bool,
    ):
        self.request_id = request_id
        self.created = created
        self.model = model
        self.tokenizer = tokenizer
        self.include_usage = include_usage
        self.want_logprobs = want_logprobs
        self._token_text: dict[int, str] = {}

    def token(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.tokenizer.decode([token_id])
        return text

    def _envelope(self, obj: str, choices: list[dict]) -> dict:
        out = {"id": self.request_id, "object": obj, "created": self.created, "model": self.model, "choices": choices}
        if self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, obj: str, usage: Usage) -> str:
        return sse({**self._envelope(obj, []), "usage": usage.model_dump()})


class CompletionRenderer(_Renderer):
    OBJECT = "text_completion"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._offsets: dict[int, int] = {}  # choice -> characters of token text sent so far

    def _logprobs(self, choice: int, lps: list[TokenLogprob]) -> CompletionLogprobs:
        tokens = [self.token(lp.token_id) for lp in lps]
        offsets, at = [], self._offsets.get(choice, 0)
        for t in tokens:
            offsets.append(at)
            at += len(t)
        self._offsets[choice] = at
        tops = [{**{self.token(t): v for t, v in lp.top}, self.token(lp.token_id): lp.logprob} for lp in lps]
        return CompletionLogprobs(
            tokens=tokens, token_logprobs=[lp.logprob for lp in lps], top_logprobs=tops, text_offset=offsets
        )

    def chunks(self, choice: int, delta: SequenceDelta) -> list[str]:
        out = []
        if delta.text or delta.logprobs:
            lp = self._logprobs(choice, delta.logprobs or []) if self.want_logprobs else None
            body = CompletionChoice(index=choice, text=delta.text, logprobs=lp)
            out.append(sse(self._envelope(self.OBJECT, [body.model_dump()])))
        if delta.finish_reason is not None:
            body = CompletionChoice(index=choice, text="", finish_reason=delta.finish_reason)
            out.append(sse(self._envelope(self.OBJECT, [body.model_dump()])))
        return out

    def response(self, choices: dict[int, ChoiceState], usage: Usage) -> CompletionResponse:
        return CompletionResponse(
            id=self.request_id, created=self.created, model=self.model, usage=usage,
            choices=[
                CompletionChoice(
                    index=i, text="".join(c.text), finish_reason=c.finish_reason,
                    logprobs=self._logprobs(i, c.logprobs) if self.want_logprobs else None,
                )
                for i, c in sorted(choices.items())
            ],
        )


class ChatRenderer(_Renderer):
    OBJECT = "chat.completion.chunk"

    def _logprobs(self, lps: list[TokenLogprob]) -> ChatLogprobs:
        def top(token_id: int, logprob: float) -> TopLogprob:
            text = self.token(token_id)
            return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))

        return ChatLogprobs(
            content=[
                ChatTokenLogprob(
                    **top(lp.token_id, lp.logprob).model_dump(), top_logprobs=[top(t, v) for t, v in lp.top]
                )
                for lp in lps
            ]
        )

    def _chunk(self, choice: ChatChunkChoice) -> str:
        return sse(self._envelope(self.OBJECT, [choice.model_dump()]))

    def opening(self, num_choices: int) -> list[str]:
        role = {"role": "assistant", "content": ""}
        return [self._chunk(ChatChunkChoice(index=i, delta=role)) for i in range(num_choices)]

    def chunks(self, choice: int, delta: SequenceDelta) -> list[str]:
        out = []
        if delta.text or delta.logprobs:
            lp = self._logprobs(delta.logprobs or []) if self.want_logprobs else None
            out.append(self._chunk(ChatChunkChoice(index=choice, delta={"content": delta.text}, logprobs=lp)))
        if delta.finish_reason is not None:
            out.append(self._chunk(ChatChunkChoice(index=choice, delta={}, finish_reason=delta.finish_reason)))
        return out

    def response(self, choices: dict[int, ChoiceState], usage: Usage) -> ChatCompletionResponse:
        return ChatCompletionResponse(
            id=self.request_id, created=self.created, model=self.model, usage=usage,
            choices=[
                ChatChoice(
                    index=i, message=ChatMessageOut(content="".join(c.text)), finish_reason=c.finish_reason,
                    logprobs=self._logprobs(c.logprobs) if self.want_logprobs else None,
                )
                for i, c in sorted(choices.items())
            ],
        )
