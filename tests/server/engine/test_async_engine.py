"""The engine thread driven from asyncio: streaming, aborts, and a free event loop."""

import asyncio
import time

import pytest

from server.engine.async_engine import AsyncEngine
from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams


@pytest.fixture
def engine(make_engine):
    eng = AsyncEngine(make_engine())
    eng.start()
    yield eng
    eng.shutdown()


async def collect(engine: AsyncEngine, req: EngineRequest) -> list[int]:
    return [t async for d in engine.generate(req) for t in d.token_ids]


async def wait_until(predicate, deadline_s: float = 30.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def test_concurrent_streams_match_offline_generation(engine, make_engine, checkpoint):
    tok = checkpoint.tokenizer
    prompts = [tok(p)["input_ids"] for p in ("The capital of Italy is", "def add(a, b):", "Snow is")]
    params = SamplingParams(max_tokens=12, temperature=0)
    expected = make_engine().generate(prompts, params)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        jobs = [collect(engine, EngineRequest(f"r{i}", p, params)) for i, p in enumerate(prompts)]
        outs = await asyncio.gather(*jobs)
        t.cancel()
        return outs, ticks

    outs, ticks = asyncio.run(main())
    assert outs == expected
    assert ticks > 36  # the loop kept turning while the engine thread computed (36 deltas arrived)


def test_leaving_a_stream_aborts_and_frees_pages(engine, checkpoint):
    tok = checkpoint.tokenizer
    book = engine.engine.pool.book
    idle = book.num_free

    async def main():
        received = 0
        req = EngineRequest("x", tok("Tell me a story")["input_ids"], SamplingParams(max_tokens=500))
        async for _ in engine.generate(req):
            received += 1
            if received == 3:
                break
        assert received == 3
        assert await wait_until(lambda: book.num_free == idle and not engine.engine.has_work())

    asyncio.run(main())


def test_bad_request_fails_only_itself(engine, checkpoint):
    tok = checkpoint.tokenizer

    async def main():
        with pytest.raises(ValueError, match="context"):
            await collect(engine, EngineRequest("big", [1] * 5000, SamplingParams(max_tokens=4)))
        return await collect(engine, EngineRequest("ok", tok("Hello")["input_ids"], SamplingParams(max_tokens=4)))

    assert len(asyncio.run(main())) == 4


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(engine, checkpoint, monkeypatch):
    tok = checkpoint.tokenizer
    real_run = engine.engine.runner.run
    calls = {"n": 0}

    def flaky(out):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real_run(out)

    monkeypatch.setattr(engine.engine.runner, "run", flaky)

    async def main():
        req = EngineRequest("f", tok("Hi")["input_ids"], SamplingParams(max_tokens=3))
        first = [d async for d in engine.generate(req)]
        second = await collect(engine, EngineRequest("s", tok("Hi")["input_ids"], SamplingParams(max_tokens=3)))
        return first, second

    first, second = asyncio.run(main())
    assert first[-1].finish_reason == "error" and first[-1].error_code == "internal_error" and "boom" in first[-1].error
    assert len(second) == 3
    assert engine.engine.pool.book.stats().kv == 0
