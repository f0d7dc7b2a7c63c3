"""What a request constrains its output to: OpenAI's response_format, vLLM's guided_* fields and its
newer structured_outputs object, or a tool choice that must call a function. Compiled here, at the API
boundary, so a grammar that cannot compile is a 400 before anything is queued."""

import asyncio
import json
from typing import Any

from server.api.errors import BadRequest
from server.api.protocol import SamplingRequest
from server.api.tool_format import ToolChoice
from server.engine.llm_engine import EngineRequest
from server.structured import GrammarCompiler, GrammarError, GrammarSpec

_GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
_STRUCTURED_KEYS = {"json": "guided_json", "regex": "guided_regex", "choice": "guided_choice",
                    "grammar": "guided_grammar"}


def output_spec(body: SamplingRequest) -> tuple[GrammarSpec, str] | None:
    """(spec, the parameter it came from), or None when the output is free; 400 on a malformed one."""
    found = []
    rf = body.response_format
    if rf is not None:
        spec = _response_format(rf)
        if spec is not None:
            found.append((spec, "response_format"))
    for name in _GUIDED:
        value = getattr(body, name)
        if value is not None:
            found.append((_guided(name, value, name), name))
    if body.structured_outputs is not None:
        found += _structured_outputs(body.structured_outputs)
    if len(found) > 1:
        names = ", ".join(p for _, p in found)
        raise BadRequest(f"the output can follow one constraint, not several ({names})", param=found[1][1])
    return found[0] if found else None


def _response_format(rf: dict[str, Any]) -> GrammarSpec | None:
    kind = rf.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return GrammarSpec("json_object", "")
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict):
            raise BadRequest("response_format json_schema needs a json_schema object", param="response_format")
        schema = js.get("schema", js.get("json_schema"))
        if schema is None:
            schema = {"type": "object"}  # OpenAI allows a name alone: any JSON object
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be a JSON object", param="response_format")
        return GrammarSpec.json_schema(schema)
    raise BadRequest(f"response_format type {kind!r} is not supported (text, json_object, json_schema)",
                     param="response_format")


def _guided(name: str, value: Any, param: str) -> GrammarSpec:
    if name == "guided_json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise BadRequest(f"{param} is not valid JSON: {e}", param=param) from None
        if not isinstance(value, dict):
            raise BadRequest(f"{param} must be a JSON schema object", param=param)
        return GrammarSpec.json_schema(value)
    if name == "guided_choice":
        if not isinstance(value, list) or not value or not all(isinstance(s, str) and s for s in value):
            raise BadRequest(f"{param} must be a non-empty list of non-empty strings", param=param)
        return GrammarSpec.choice(value)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{param} must be a non-empty string", param=param)
    return GrammarSpec("regex" if name == "guided_regex" else "grammar", value)


def _structured_outputs(so: dict[str, Any]) -> list[tuple[GrammarSpec, str]]:
    out = []
    for key, value in so.items():
        if value is None or value is False:
            continue
        param = f"structured_outputs.{key}"
        if key == "json_object":
            out.append((GrammarSpec("json_object", ""), param))
        elif key in _STRUCTURED_KEYS:
            out.append((_guided(_STRUCTURED_KEYS[key], value, param), param))
        elif key not in ("disable_fallback", "disable_any_whitespace", "disable_additional_properties",
                         "whitespace_pattern", "backend"):
            raise BadRequest(f"{param} is not supported (json, regex, choice, grammar, json_object)", param=param)
    return out


async def attach_grammar(
    compiler: GrammarCompiler, body: SamplingRequest, reqs: list[EngineRequest], tools: ToolChoice | None = None,
) -> None:
    """Compile the request's constraint (off the event loop) and hand it to each engine request."""
    found = output_spec(body)
    if tools is not None and tools.forced:
        if found is not None:
            raise BadRequest(f"tool_choice {tools.mode!r} already constrains the output; drop {found[1]}",
                             param=found[1])
        found = (tools.grammar_spec(), "tools")
    if found is None:
        return
    spec, param = found
    try:
        grammar = await asyncio.to_thread(compiler.compile, spec)
    except GrammarError as e:
        raise BadRequest(f"{param}: {e}", param=param, code="invalid_grammar") from None
    for r in reqs:
        r.grammar = grammar
