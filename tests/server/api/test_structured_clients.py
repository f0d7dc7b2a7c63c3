"""Structured outputs and tool calls with the clients people use, against a live server: the openai
client, instructor and langchain-openai, each on the base model, a demo adapter, a router and a router's
mixture, in the same batch as plain requests whose greedy outputs must not change."""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import instructor
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.server.api.harness import MODEL, REPO

MODELS = [MODEL, "json_extract", "auto", "blend"]  # base, adapter, router (embedding), mixture (arrow top-2)
PLAIN = [(MODEL, "The capital of France is"), ("sentiment", "I loved this movie. Sentiment:"),
         ("blend", "Reverse the word cat:"), ("auto", "What is 2 + 3?")]
PERSON_ASK = [{"role": "user", "content": "Make up a person with a name and an age."}]
WEATHER_ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"max_tokens": 64, "temperature": 0}


class Person(BaseModel):
    name: str
    age: int


class GetWeather(BaseModel):
    """Current weather in a city."""

    city: str


WEATHER_TOOL = openai.pydantic_function_tool(GetWeather)
NAMED = {"type": "function", "function": {"name": "GetWeather"}}


def _plain(client: openai.OpenAI, model: str, prompt: str) -> str:
    return client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0).choices[0].text


@pytest.fixture(scope="module")
def alone(routed_server) -> dict[tuple[str, str], str]:
    client = routed_server.client()
    return {(m, p): _plain(client, m, p) for m, p in PLAIN}


def _beside_plain(server, alone, calls: list) -> list:
    """Run calls concurrently with the plain requests; the plain ones must answer as they do alone."""
    client = server.client()
    with ThreadPoolExecutor(len(calls) + len(PLAIN)) as pool:
        plain = [pool.submit(_plain, client, m, p) for m, p in PLAIN]
        results = [pool.submit(c) for c in calls]
        out = [r.result() for r in results]
        assert [f.result() for f in plain] == [alone[k] for k in PLAIN]
    return out


def _streamed_calls(client: openai.OpenAI, model: str, tool_choice) -> tuple[list, str]:
    with client.chat.completions.stream(model=model, messages=WEATHER_ASK, tools=[WEATHER_TOOL],
                                        tool_choice=tool_choice, **GREEDY) as s:
        final = s.get_final_completion()
    return final.choices[0].message.tool_calls, final.choices[0].finish_reason


def test_openai_parse_and_tools(routed_server, alone):
    client = routed_server.client()
    calls = []
    for m in MODELS:
        calls += [
            lambda m=m: client.chat.completions.parse(model=m, messages=PERSON_ASK, response_format=Person, **GREEDY),
            lambda m=m: client.chat.completions.parse(model=m, messages=WEATHER_ASK, tools=[WEATHER_TOOL],
                                                      tool_choice="required", **GREEDY),
            lambda m=m: client.chat.completions.parse(model=m, messages=WEATHER_ASK, tools=[WEATHER_TOOL],
                                                      tool_choice=NAMED, **GREEDY),
            lambda m=m: _streamed_calls(client, m, "required"),
            lambda m=m: _streamed_calls(client, m, NAMED),
        ]
    results = _beside_plain(routed_server, alone, calls)
    for i in range(0, len(results), 5):
        parsed, required, named, *streams = results[i : i + 5]
        assert isinstance(parsed.choices[0].message.parsed, Person)
        for r in (required, named):
            assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
            (call,) = r.choices[0].message.tool_calls
            assert call.id.startswith("call_") and call.function.name == "GetWeather"
            assert isinstance(call.function.parsed_arguments, GetWeather)
        for tool_calls, reason in streams:
            assert reason == "tool_calls" and len(tool_calls) == 1
            assert GetWeather.model_validate_json(tool_calls[0].function.arguments)


def test_instructor_tools_and_json(routed_server, alone):
    client = routed_server.client()
    modes = (instructor.Mode.TOOLS, instructor.Mode.JSON, instructor.Mode.JSON_SCHEMA)
    calls = [
        lambda m=m, mode=mode: instructor.from_openai(client, mode=mode).chat.completions.create(
            model=m, response_model=Person, messages=PERSON_ASK, max_retries=0, **GREEDY)
        for m in MODELS for mode in modes
    ]
    assert all(isinstance(p, Person) for p in _beside_plain(routed_server, alone, calls))


def test_langchain_bind_tools_and_structured_output(routed_server, alone):
    def llm(model: str) -> ChatOpenAI:
        return ChatOpenAI(base_url=f"{routed_server.url}/v1", api_key="unused", model=model, max_retries=0,
                          **GREEDY)

    def streamed(model: str):
        acc = None
        for chunk in llm(model).bind_tools([GetWeather], tool_choice="GetWeather").stream(WEATHER_ASK[0]["content"]):
            acc = chunk if acc is None else acc + chunk
        return acc

    calls = []
    for m in MODELS:
        calls += [
            lambda m=m: llm(m).bind_tools([GetWeather], tool_choice="required").invoke(WEATHER_ASK[0]["content"]),
            lambda m=m: streamed(m),
            lambda m=m: llm(m).with_structured_output(Person).invoke(PERSON_ASK[0]["content"]),
            lambda m=m: llm(m).with_structured_output(Person, method="function_calling").invoke(
                PERSON_ASK[0]["content"]),
        ]
    results = _beside_plain(routed_server, alone, calls)
    for i in range(0, len(results), 4):
        required, streamed_msg, person, person_by_tool = results[i : i + 4]
        for msg in (required, streamed_msg):
            (tc,) = msg.tool_calls
            assert tc["name"] == "GetWeather" and GetWeather(**tc["args"])
        assert isinstance(person, Person) and isinstance(person_by_tool, Person)


def test_readme_snippets_run(routed_server):
    """The README's "Structured outputs and tools" snippets, as written, against this server."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Structured outputs and tools", 1)[1].split("\n### ", 1)[0]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    scope: dict = {}
    exec(compile(code.replace("http://localhost:8000", routed_server.url), "README.md", "exec"), scope)
    assert isinstance(scope["person"], scope["Person"])
    assert scope["call"].function.name == "get_weather" and "city" in json.loads(scope["call"].function.arguments)
    assert scope["label"] in ("positive", "negative")
    assert scope["tool_call"]["name"] == "GetWeather"


def _post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{path}", json=body, timeout=120)


def test_vllm_fields_and_json_object_on_completions(routed_server):
    base = {"model": "json_extract", "max_tokens": 32, "temperature": 0}
    r = _post(routed_server, "completions", {**base, "prompt": "Colour:", "guided_choice": ["red", "green"]})
    assert r.json()["choices"][0]["text"] in ("red", "green")
    r = _post(routed_server, "completions", {**base, "prompt": "Phone:", "guided_regex": r"\d{3}-\d{4}"})
    assert re.fullmatch(r"\d{3}-\d{4}", r.json()["choices"][0]["text"])
    r = _post(routed_server, "completions", {**base, "prompt": "Phone:", "structured_outputs": {"regex": r"[ab]{3}"}})
    assert re.fullmatch(r"[ab]{3}", r.json()["choices"][0]["text"])
    r = _post(routed_server, "completions", {**base, "prompt": "Yes or no?", "guided_grammar": 'root ::= "yes" | "no"'})
    assert r.json()["choices"][0]["text"] in ("yes", "no")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = _post(routed_server, "completions", {**base, "prompt": "Is water wet? As JSON:", "guided_json": schema})
    assert isinstance(json.loads(r.json()["choices"][0]["text"])["ok"], bool)
    r = _post(routed_server, "completions", {**base, "prompt": "JSON:", "n": 2, "temperature": 1, "seed": 1,
                                             "response_format": {"type": "json_object"}})
    for choice in r.json()["choices"]:
        assert choice["finish_reason"] == "length" or isinstance(json.loads(choice["text"]), dict)


@pytest.mark.parametrize(("body", "param"), [
    ({"guided_regex": "(("}, "guided_regex"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format"),
    ({"guided_grammar": "root ::= undefined_rule"}, "guided_grammar"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function",
                                                                                  "function": {"name": "g"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "retrieval"}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required",
      "response_format": {"type": "json_object"}}, "response_format"),
])
def test_bad_constraints_are_400s_naming_the_parameter(routed_server, body, param):
    r = _post(routed_server, "chat/completions", {"model": MODEL, "messages": WEATHER_ASK, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_tool_results_are_accepted_back(routed_server):
    client = routed_server.client()
    first = client.chat.completions.create(model="json_extract", messages=WEATHER_ASK, tools=[WEATHER_TOOL],
                                           tool_choice="required", **GREEDY)
    call = first.choices[0].message.tool_calls[0]
    messages = [*WEATHER_ASK, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 21, "sky": "clear"}'}]
    r = client.chat.completions.create(model="json_extract", messages=messages, tools=[WEATHER_TOOL],
                                       tool_choice="none", max_tokens=24, temperature=0)
    assert r.choices[0].message.content and r.choices[0].message.tool_calls is None
    auto = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL], max_tokens=24,
                                          temperature=0)
    assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls")
