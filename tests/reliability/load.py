"""A bounded mixed load against a live server: streams and plain requests, n > 1, client disconnects.

Every request must end (a response, an error body, or a stream closed by [DONE]) within its timeout;
what each ended with is returned for the caller to judge.
"""

import asyncio
import json
import random
from dataclasses import dataclass

import httpx

PROMPTS = ["Review: the food was great\nSentiment:", "Reverse: one two three\nAnswer:", "Calculate: 3 + 4 =",
           "Tell me a story about a cat.", "The capital of France is"]


@dataclass(slots=True)
class Outcome:
    model: str
    stream: bool
    status: int  # HTTP status; 0 = we disconnected on purpose
    error: dict | None  # the OpenAI error body (or streamed error event), if any
    done: bool  # a stream ended with [DONE]


async def one(client: httpx.AsyncClient, rng: random.Random, models: list[str], disconnect: float,
              timeout_s: float, max_tokens: int = 12) -> Outcome:
    model = rng.choice(models)
    stream = rng.random() < 0.5
    body = {"model": model, "prompt": rng.choice(PROMPTS), "max_tokens": rng.randint(1, max_tokens),
            "n": rng.choice([1, 1, 2]), "temperature": rng.choice([0, 0.8]), "stream": stream}
    leave = rng.random() < disconnect
    return await asyncio.wait_for(_send(client, body, leave), timeout_s)  # TimeoutError = a hung request


async def _send(client: httpx.AsyncClient, body: dict, leave: bool) -> Outcome:
    model, stream = body["model"], body["stream"]
    if not stream:
        if leave:  # give up while the server works on it
            task = asyncio.ensure_future(client.post("/v1/completions", json=body))
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return Outcome(model, False, 0, None, False)
        r = await client.post("/v1/completions", json=body)
        return Outcome(model, False, r.status_code, r.json().get("error") if r.status_code != 200 else None, False)
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return Outcome(model, True, r.status_code, json.loads(await r.aread()).get("error"), False)
        error, done = None, False
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if leave:
                return Outcome(model, True, 0, None, False)
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line.removeprefix("data: "))
            if "error" in chunk:
                error = chunk["error"]
        return Outcome(model, True, 200, error, done)


async def run_load(url: str, models: list[str], n: int, concurrency: int, disconnect: float, seed: int,
                   timeout_s: float = 120.0, on_tick=None, max_tokens: int = 12) -> list[Outcome]:
    rng = random.Random(seed)
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)

    async def guarded(client, i):
        async with sem:
            if on_tick is not None:
                await on_tick(i)
            return await one(client, rng, models, disconnect, timeout_s, max_tokens)

    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        return await asyncio.gather(*(guarded(client, i) for i in range(n)))
