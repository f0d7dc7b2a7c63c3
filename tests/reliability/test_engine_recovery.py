"""The engine survives a step that raises anywhere: the step's already-built deltas go out, the
sequences it touched end with an error, pages and adapter holds return, and the next step serves.

Before: fail_step blamed the previous step's sequences when schedule() raised (and leaked the ones
it had placed), dropped the deltas an output loop had already built, and `_calls` grew without bound.
"""

import asyncio

import pytest

from server.engine.async_engine import AsyncEngine, EngineBusy
from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams
from server.engine.sequence import SeqStatus

pytestmark = pytest.mark.slow


def _engine(make_engine):
    engine = make_engine(max_num_seqs=4, max_batch_tokens=64)
    return engine, engine.pool.book.num_free


def _add(engine, rid: str, n_prompt: int = 20, max_tokens: int = 8, first: int = 100) -> None:
    engine.add_request(EngineRequest(rid, list(range(first, first + n_prompt)), SamplingParams(max_tokens=max_tokens,
                                                                                             temperature=0)))


def _drain(engine) -> dict[str, str]:
    finish = {}
    while engine.has_work():
        for d in engine.step():
            if d.finish_reason:
                finish[d.request_id] = d.finish_reason
    return finish


def test_schedule_raising_fails_what_it_placed_and_frees_their_pages(make_engine, monkeypatch):
    engine, free0 = _engine(make_engine)
    _add(engine, "a")
    engine.step()  # a runs (prefill done) and becomes the previous step
    _add(engine, "b")
    real = engine.scheduler.schedule

    def placed_then_raised():
        real()  # pages grown, chunks placed ...
        raise RuntimeError("boom in schedule")  # ... and the output is lost

    monkeypatch.setattr(engine.scheduler, "schedule", placed_then_raised)
    with pytest.raises(RuntimeError):
        engine.step()
    monkeypatch.undo()
    deltas = engine.fail_step(RuntimeError("boom"))
    failed = {d.request_id for d in deltas if d.finish_reason == "error"}
    assert failed == {"a", "b"}  # every sequence schedule() may have touched, none left half-placed
    assert not engine.has_work()
    assert engine.pool.book.stats().kv == 0 and engine.pool.book.num_available() == free0  # cached blocks stay
    _add(engine, "c")
    assert _drain(engine) == {"c": "length"}


def test_output_loop_raising_keeps_the_deltas_already_built(make_engine, monkeypatch):
    engine, free0 = _engine(make_engine)
    for i, rid in enumerate("abc"):  # other prompts: equal ones would wait a step for the first's cached blocks
        _add(engine, rid, max_tokens=1, first=100 + 50 * i)  # every one finishes in its first step
    calls = {"n": 0}
    real = engine.outputs.append

    def second_raises(seq, token_id, logprob, *more):  # more: prompt logprobs, since 7107c80
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom in output")
        return real(seq, token_id, logprob, *more)

    monkeypatch.setattr(engine.outputs, "append", second_raises)
    with pytest.raises(RuntimeError):
        engine.step()
    monkeypatch.undo()
    deltas = engine.fail_step(RuntimeError("boom"))
    reasons = {d.request_id: d.finish_reason for d in deltas}
    assert sorted(reasons.values()) == ["error", "error", "length"]  # the first one's finished delta survived
    assert all(s.status is SeqStatus.FINISHED for seqs in engine._requests.values() for s in seqs)
    assert not engine._requests and not engine.has_work()
    assert engine.pool.book.stats().kv == 0 and engine.pool.book.num_available() == free0  # cached blocks stay


def test_a_request_for_an_unloaded_adapter_fails_alone(make_engine):
    """The engine thread's add_request raising (adapter unloaded after the API's check) fails that
    request only: before, a KeyError escaped the drain and killed the engine thread."""
    engine = make_engine()
    aeng = AsyncEngine(engine)
    aeng.start()

    async def run():
        gone = EngineRequest("gone", [1, 2, 3], SamplingParams(max_tokens=2), adapter="no-such-adapter")
        with pytest.raises(ValueError, match="does not exist"):
            async for _ in aeng.generate(gone):
                pass
        ok = EngineRequest("ok", [1, 2, 3], SamplingParams(max_tokens=2, temperature=0))
        return [d async for d in aeng.generate(ok)]

    try:
        deltas = asyncio.run(run())
        assert deltas[-1].finish_reason == "length"
        assert aeng.alive and aeng.healthy
    finally:
        aeng.shutdown()


def test_pending_calls_are_bounded(monkeypatch):
    monkeypatch.setattr("server.engine.async_engine.MAX_PENDING_CALLS", 3)
    aeng = AsyncEngine(engine=None)  # never started: calls pile up

    async def run():
        pending = [asyncio.ensure_future(aeng.call(lambda: None)) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(EngineBusy):
            await aeng.call(lambda: None)
        for p in pending:
            p.cancel()

    asyncio.run(run())
