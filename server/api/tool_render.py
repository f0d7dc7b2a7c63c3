"""Chat responses of a request with tools: the model's answer as message.tool_calls when it is calls.

Streamed, a choice's text is held while it may still turn out to be calls (always, when the calls are
forced); once it cannot, it streams as content. At its end, held text becomes one delta.tool_calls
chunk (each call whole: id, name, arguments) and finish_reason "tool_calls", or content as usual.
"""

from dataclasses import dataclass, field, replace

from server.api.protocol import ChatChunkChoice, ChatCompletionResponse, ChatMessageOut, Usage
from server.api.render import ChatRenderer, ChoiceState
from server.api.tool_format import ToolChoice, parse_tool_calls
from server.engine.outputs import SequenceDelta, TokenLogprob

_OPEN = "<tool_call>"


@dataclass(slots=True)
class _Held:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)


def may_be_calls(text: str) -> bool:
    s = text.lstrip()
    return not s or s[0] in "[{" or s.startswith(_OPEN) or _OPEN.startswith(s)


class ToolChatRenderer(ChatRenderer):
    def __init__(self, tools: ToolChoice, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tools = tools
        self._held: dict[int, _Held] = {}
        self._streaming: set[int] = set()  # choices found to be plain content

    def chunks(self, choice: int, delta: SequenceDelta) -> list[str]:
        if choice in self._streaming:
            return super().chunks(choice, delta)
        held = self._held.setdefault(choice, _Held())
        held.text += delta.text
        held.logprobs += delta.logprobs or []
        whole = replace(delta, text=held.text, logprobs=held.logprobs or None)
        if delta.finish_reason is None:
            if self.tools.forced or may_be_calls(held.text):
                return []
            self._streaming.add(choice)
            return super().chunks(choice, whole)
        del self._held[choice]
        calls = parse_tool_calls(held.text, self.tools.tools)
        if calls is None:
            return super().chunks(choice, whole)
        tool_calls = [c.openai(i) for i, c in enumerate(calls)]
        return [self._chunk(ChatChunkChoice(index=choice, delta={"tool_calls": tool_calls})),
                self._chunk(ChatChunkChoice(index=choice, delta={}, finish_reason="tool_calls"))]

    def response(self, choices: dict[int, ChoiceState], usage: Usage) -> ChatCompletionResponse:
        out = super().response(choices, usage)
        for c in out.choices:
            calls = parse_tool_calls(c.message.content or "", self.tools.tools)
            if calls is not None:
                c.message = ChatMessageOut(content=None, tool_calls=[call.openai() for call in calls])
                c.finish_reason = "tool_calls"
        return out
