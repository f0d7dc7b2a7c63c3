"""The generic tool format without a server: choices, grammar, prompt rendering, parsing, streaming."""

import json

import pytest

from server.api.errors import BadRequest
from server.api.protocol import ChatCompletionRequest
from server.api.tool_format import INSTRUCTION, chat_template_inputs, parse_tool_calls, tool_choice_of
from server.api.tool_render import ToolChatRenderer, may_be_calls
from server.engine.outputs import SequenceDelta

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


class FakeTokenizer:
    chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def body(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(**{"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw})


def delta(text: str, finish: str | None = None) -> SequenceDelta:
    return SequenceDelta("r", 0, [], text, None, finish, 1, 1)


def test_tool_choices():
    assert tool_choice_of(body()) is None
    assert tool_choice_of(body(tools=[WEATHER], tool_choice="none")) is None
    auto = tool_choice_of(body(tools=[WEATHER, TIME]))
    assert auto.mode == "auto" and not auto.forced and auto.parallel
    assert [t.name for t in auto.tools] == ["get_weather", "get_time"]
    assert auto.tools[1].parameters == {"type": "object", "properties": {}}
    pick = {"type": "function", "function": {"name": "get_time"}}
    named = tool_choice_of(body(tools=[WEATHER, TIME], tool_choice=pick))
    assert named.mode == "named" and named.name == "get_time" and named.forced
    for bad in [{"tool_choice": "required"}, {"tools": [WEATHER, WEATHER]}, {"tools": [WEATHER], "tool_choice": "x"},
                {"tools": [{"type": "function", "function": {"name": "bad name!"}}]}]:
        with pytest.raises(BadRequest):
            tool_choice_of(body(**bad))


def test_forced_grammar_is_a_list_of_valid_calls():
    required = json.loads(tool_choice_of(body(tools=[WEATHER, TIME], tool_choice="required")).grammar_spec().text)
    assert required["type"] == "array" and required["minItems"] == 1 and required["maxItems"] == 2
    assert [c["properties"]["name"]["const"] for c in required["items"]["anyOf"]] == ["get_weather", "get_time"]
    one = json.loads(tool_choice_of(body(tools=[WEATHER, TIME], tool_choice="required",
                                         parallel_tool_calls=False)).grammar_spec().text)
    assert one["maxItems"] == 1
    named = json.loads(tool_choice_of(body(tools=[WEATHER, TIME], tool_choice={
        "type": "function", "function": {"name": "get_weather"}})).grammar_spec().text)
    assert named["items"]["properties"]["arguments"] == WEATHER["function"]["parameters"] and named["maxItems"] == 1


def test_generic_rendering_of_tools_and_earlier_calls():
    b = body(tools=[WEATHER], messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
    ])
    messages, extra = chat_template_inputs(b, FakeTokenizer())
    assert extra == {}
    assert messages[0]["content"].startswith("Be brief.") and INSTRUCTION in messages[0]["content"]
    assert '"name": "get_weather"' in messages[0]["content"]
    assert json.loads(messages[2]["content"]) == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert messages[3] == {"role": "tool", "content": "cold"}
    plain, _ = chat_template_inputs(body(), FakeTokenizer())
    assert plain == [{"role": "user", "content": "hi"}]


def test_native_template_gets_the_tools():
    class ToolTokenizer(FakeTokenizer):
        chat_template = "{% if tools %}{{ tools }}{% endif %}"

    messages, extra = chat_template_inputs(body(tools=[WEATHER]), ToolTokenizer())
    assert extra["tools"][0]["function"]["name"] == "get_weather" and messages[0]["content"] == "hi"


@pytest.mark.parametrize(("text", "calls"), [
    ('[{"name": "get_weather", "arguments": {"city": "Paris"}}]', [("get_weather", {"city": "Paris"})]),
    ('{"name": "get_time", "arguments": {}}', [("get_time", {})]),
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "A"}}\n</tool_call>\n<tool_call>{"name": "get_time",'
     ' "arguments": "{}"}</tool_call>', [("get_weather", {"city": "A"}), ("get_time", {})]),
    ("The weather is nice.", None),
    ('[{"name": "unknown", "arguments": {}}]', None),
    ('[{"name": "get_weather", "arguments": {"city": "Pa', None),
    ("[]", None),
])
def test_parse_tool_calls(text, calls):
    tools = tool_choice_of(body(tools=[WEATHER, TIME])).tools
    got = parse_tool_calls(text, tools)
    assert (None if got is None else [(c.name, json.loads(c.arguments)) for c in got]) == calls


def _stream(choice, texts: list[str], finish: str = "stop") -> list[dict]:
    r = ToolChatRenderer(choice, "id", 0, "m", FakeTokenizer(), False, False)
    chunks = []
    for i, t in enumerate(texts):
        chunks += r.chunks(0, delta(t, finish if i == len(texts) - 1 else None))
    return [json.loads(c.removeprefix("data: ").strip())["choices"][0] for c in chunks]


def test_streams_hold_calls_and_pass_text():
    auto = tool_choice_of(body(tools=[WEATHER]))
    text = _stream(auto, ["The ", "sky ", "is blue."])
    assert [c["delta"].get("content") for c in text] == ["The ", "sky ", "is blue.", None]
    assert text[-1]["finish_reason"] == "stop"
    calls = _stream(auto, [' [{"name": "get_weather",', ' "arguments": {"city": "Rome"}}]'])
    assert len(calls) == 2 and calls[-1]["finish_reason"] == "tool_calls"
    (tc,) = calls[0]["delta"]["tool_calls"]
    assert tc["index"] == 0 and tc["id"].startswith("call_") and json.loads(tc["function"]["arguments"]) == {
        "city": "Rome"}
    cut = _stream(auto, ['[{"name": "get_weather"'], finish="length")
    assert cut[0]["delta"]["content"] == '[{"name": "get_weather"' and cut[-1]["finish_reason"] == "length"
    assert may_be_calls("  <tool_") and may_be_calls("") and not may_be_calls("Hello")
