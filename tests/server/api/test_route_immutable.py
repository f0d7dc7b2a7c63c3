"""A router's choice reaches the engine on new requests; the request the API built is never changed in place."""

import asyncio
from types import SimpleNamespace

from router.decision import RouteDecision
from server.api.routes_openai import _route
from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams


class _Counter:
    def labels(self, *names):
        return self

    def inc(self):
        pass


def _ctx(decision: RouteDecision):
    async def route_async(name, text):
        return decision
    return SimpleNamespace(routers=SimpleNamespace(route_async=route_async),
                           metrics=SimpleNamespace(router_choices=_Counter()))


def test_single_adapter_and_mixture_decisions_leave_the_requests_untouched():
    reqs = [EngineRequest(f"r{i}", [1, 2, 3], SamplingParams(max_tokens=2)) for i in range(2)]
    for decision, adapter, mixture in [
        (RouteDecision("auto", (("a", 1.0),)), "a", ()),
        (RouteDecision("blend", (("a", 0.6), ("b", 0.4))), None, (("a", 0.6), ("b", 0.4))),
        (RouteDecision("auto", (), fell_back=True), None, ()),
    ]:
        got, routed = asyncio.run(_route(_ctx(decision), decision.router, "text", reqs))
        assert got is decision
        assert [(r.adapter, r.mixture) for r in routed] == [(adapter, mixture)] * 2
        assert all(r.adapter is None and r.mixture == () for r in reqs)
        assert [r.request_id for r in routed] == ["r0", "r1"] and routed[0].params is reqs[0].params
