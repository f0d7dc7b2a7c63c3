"""Engine deltas -> OpenAI bodies: whole responses and SSE chunks, for completions and chat.

Streams follow OpenAI: chat opens each choice with a role delta, content deltas follow, each choice
ends with an empty delta carrying finish_reason; with stream_options.include_usage every chunk has
"usage": null and a last chunk with no choices carries the usage; then `data: [DONE]`.
"""

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from server.api.echo import Echo
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
    PromptLogprob,
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
    prompt_logprobs: list[TokenLogprob | None] | None = None

    def add(self, delta: SequenceDelta) -> None:
        self.text.append(delta.text)
        self.logprobs += delta.logprobs or []
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs = delta.prompt_logprobs
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

    def __init__(self, *args, echo: Echo | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.echo = echo
        self._offsets: dict[int, int] = {}  # choice -> characters of token text sent so far
        self._opened: set[int] = set()  # choices whose prompt (echo) went out

    def _logprobs(self, choice: int, lps: list[tuple[int, TokenLogprob | None]]) -> CompletionLogprobs:
        """(token id, its logprob or None for the prompt's first token) -> OpenAI's parallel lists."""
        tokens = [self.token(t) for t, _ in lps]
        offsets, at = [], self._offsets.get(choice, 0)
        for t in tokens:
            offsets.append(at)
            at += len(t)
        self._offsets[choice] = at
        tops = [None if lp is None else {**{self.token(t): v for t, v in lp.top}, self.token(t): lp.logprob}
                for t, lp in lps]
        return CompletionLogprobs(tokens=tokens, token_logprobs=[None if lp is None else lp.logprob for _, lp in lps],
                                  top_logprobs=tops, text_offset=offsets)

    def _vllm_prompt_logprobs(self, lps: list[TokenLogprob | None]) -> list[dict[str, PromptLogprob] | None]:
        def entry(lp: TokenLogprob) -> dict[str, PromptLogprob]:
            top = {str(t): PromptLogprob(logprob=v, rank=r, decoded_token=self.token(t))
                   for r, (t, v) in enumerate(lp.top, 1)}
            return {str(lp.token_id): PromptLogprob(logprob=lp.logprob, rank=lp.rank,
                                                    decoded_token=self.token(lp.token_id)), **top}

        return [None if lp is None else entry(lp) for lp in lps]

    def _choice(self, choice: int, text: str, lps: list[TokenLogprob], prompt_lps: list[TokenLogprob | None] | None,
                finish_reason: str | None) -> CompletionChoice:
        """One choice's text and logprobs: the prompt first (echo) the first time, then what was generated."""
        e, entries, opening = self.echo, [], choice not in self._opened
        if e is not None and e.only:
            text, lps, finish_reason = "", [], finish_reason and "length"
        if e is not None and e.prompts is not None and opening:
            self._opened.add(choice)
            text = e.prompts[choice // e.n] + text
            if e.logprobs and prompt_lps is not None:  # None only when the choice ended before its first token
                entries = list(zip(e.prompt_ids[choice // e.n], prompt_lps, strict=True))
        entries += [(lp.token_id, lp) for lp in lps]
        return CompletionChoice(
            index=choice, text=text, finish_reason=finish_reason,
            logprobs=self._logprobs(choice, entries) if self.want_logprobs else None,
            prompt_logprobs=self._vllm_prompt_logprobs(prompt_lps)
            if e is not None and e.vllm_prompt_logprobs and prompt_lps is not None else None,
        )

    def chunks(self, choice: int, delta: SequenceDelta) -> list[str]:
        out = []
        body = self._choice(choice, delta.text, delta.logprobs or [], delta.prompt_logprobs, None)
        if body.text or (body.logprobs and body.logprobs.tokens) or body.prompt_logprobs:
            out.append(sse(self._envelope(self.OBJECT, [body.model_dump()])))
        if delta.finish_reason is not None:
            reason = "length" if self.echo is not None and self.echo.only else delta.finish_reason
            body = CompletionChoice(index=choice, text="", finish_reason=reason)
            out.append(sse(self._envelope(self.OBJECT, [body.model_dump()])))
        return out

    def response(self, choices: dict[int, ChoiceState], usage: Usage) -> CompletionResponse:
        return CompletionResponse(
            id=self.request_id, created=self.created, model=self.model, usage=usage,
            choices=[self._choice(i, "".join(c.text), c.logprobs, c.prompt_logprobs, c.finish_reason)
                     for i, c in sorted(choices.items())],
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
