"""Tool calling for models whose chat template has no tool format: the generic format.

The tools go into the system prompt as JSON schemas, with one instruction: to call functions, answer
with only a JSON list of calls, `[{"name": ..., "arguments": {...}}]`. tool_choice "required" and a
named function are enforced with a grammar of exactly that list (arguments valid against the function's
schema; with parallel_tool_calls, at most one call per tool); "auto" leaves the model free and parses
calls from its text (the list, one call object, or Hermes-style `<tool_call>{...}</tool_call>` blocks).
When the tokenizer's template handles `tools`, the template renders them and the conversation instead
(the same grammar and parser apply).
"""

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from server.api.errors import BadRequest
from server.api.protocol import ChatCompletionRequest, ChatMessage
from server.structured import GrammarSpec

_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,64}$")
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
INSTRUCTION = ("To call functions, answer with only a JSON list of calls, for example "
               '[{"name": "function_name", "arguments": {"argument": "value"}}]. Otherwise answer normally.')


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass(frozen=True, slots=True)
class ToolChoice:
    tools: tuple[Tool, ...]
    mode: Literal["auto", "required", "named"]
    name: str | None = None  # mode "named": the function that must be called
    parallel: bool = True  # more than one call allowed

    @property
    def forced(self) -> bool:
        return self.mode != "auto"

    def grammar_spec(self) -> GrammarSpec:
        """A JSON list of calls to these tools: one call unless parallel, then at most one per tool (a small
        model left an open list repeats its call until max_tokens); only the named one when named."""
        tools = [t for t in self.tools if self.mode != "named" or t.name == self.name]
        calls = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                  "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
        item = calls[0] if len(calls) == 1 else {"anyOf": calls}
        most = len(tools) if self.parallel and self.mode != "named" else 1
        return GrammarSpec.json_schema({"type": "array", "items": item, "minItems": 1, "maxItems": most})


@dataclass(frozen=True, slots=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def openai(self, index: int | None = None) -> dict[str, Any]:
        out = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
               "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


def tool_choice_of(body: ChatCompletionRequest) -> ToolChoice | None:
    """The request's tools and how they may be used; None when the model answers in text only."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none", "auto"):
            raise BadRequest("tool_choice needs tools", param="tool_choice")
        return None
    tools = tuple(_tool(t, i) for i, t in enumerate(body.tools))
    names = [t.name for t in tools]
    if len(set(names)) < len(names):
        raise BadRequest("tools name each function once", param="tools")
    parallel = body.parallel_tool_calls is not False
    if choice is None or choice == "auto":
        return ToolChoice(tools, "auto", parallel=parallel)
    if choice == "none":
        return None
    if choice == "required":
        return ToolChoice(tools, "required", parallel=parallel)
    fn = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise BadRequest('tool_choice is "none", "auto", "required" or {"type": "function", "function": '
                         '{"name": ...}}', param="tool_choice")
    if name not in names:
        raise BadRequest(f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
    return ToolChoice(tools, "named", name, parallel=False)


def _tool(t: dict[str, Any], i: int) -> Tool:
    fn = t.get("function")
    if t.get("type", "function") != "function" or not isinstance(fn, dict):
        raise BadRequest(f"tools[{i}]: only function tools are supported", param="tools")
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest(f"tools[{i}].function.name must be 1-64 letters, digits, _ . or -", param="tools")
    params = fn.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise BadRequest(f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
    desc = fn.get("description") or ""
    return Tool(name, desc if isinstance(desc, str) else str(desc), params)


def template_has_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    template = tokenizer.chat_template
    return isinstance(template, str) and "tools" in template


def chat_template_inputs(
    body: ChatCompletionRequest, tokenizer: PreTrainedTokenizerBase,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(messages, extra apply_chat_template arguments) for this request, tools rendered."""
    choice = tool_choice_of(body)
    if template_has_tools(tokenizer):
        messages = [_native_message(m) for m in body.messages]
        return messages, ({"tools": [t.openai() for t in choice.tools]} if choice else {})
    messages = [{"role": m.role, "content": _generic_content(m)} for m in body.messages]
    if choice is not None:
        prompt = tools_prompt(choice.tools)
        if messages[0]["role"] in ("system", "developer"):
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}".strip()}
        else:
            messages.insert(0, {"role": "system", "content": prompt})
    return messages, {}


def tools_prompt(tools: tuple[Tool, ...]) -> str:
    lines = ["You can call these functions (JSON schemas of their arguments):"]
    lines += [json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters})
              for t in tools]
    return "\n".join([*lines, INSTRUCTION])


def _arguments(call: dict[str, Any]) -> Any:
    fn = call.get("function") or {}
    args = fn.get("arguments", "{}")
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args


def _generic_content(m: ChatMessage) -> str:
    text = m.text()
    if m.role == "assistant" and m.tool_calls:
        calls = [{"name": (c.get("function") or {}).get("name", ""), "arguments": _arguments(c)}
                 for c in m.tool_calls]
        text = f"{text}\n{json.dumps(calls)}".strip()
    return text


def _native_message(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.text()}
    if m.tool_calls:
        out["tool_calls"] = [{"type": "function", "id": c.get("id"),
                              "function": {"name": (c.get("function") or {}).get("name", ""),
                                           "arguments": _arguments(c)}} for c in m.tool_calls]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.name:
        out["name"] = m.name
    return out


def parse_tool_calls(text: str, tools: tuple[Tool, ...]) -> list[ParsedCall] | None:
    """The calls in a model's answer, or None when it is not (only) calls to these tools."""
    text = text.strip()
    blocks = _HERMES.findall(text) if text.startswith("<tool_call>") else [text]
    items: list[Any] = []
    for block in blocks:
        try:
            value = json.loads(block)
        except ValueError:
            return None
        items += value if isinstance(value, list) else [value]
    names = {t.name for t in tools}
    calls = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in names:
            return None
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        calls.append(ParsedCall(item["name"], json.dumps(args)))
    return calls or None
