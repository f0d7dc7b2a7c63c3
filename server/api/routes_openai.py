"""/v1/completions, /v1/chat/completions and /v1/models."""

import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from functools import partial

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from router.decision import RouteDecision
from server import header_names
from server.api.context import ServerContext
from server.api.echo import Echo
from server.api.errors import APIError, BadRequest, InternalError, NotFound, ServiceUnavailable, error_body
from server.api.generation import ClientGone, Generation, unless_disconnected
from server.api.inputs import chat_request, completion_requests
from server.api.output_constraints import attach_grammar
from server.api.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    CompletionTokensDetails,
    ModelInfo,
    ModelList,
    PromptTokensDetails,
    Usage,
)
from server.api.render import ChatRenderer, ChoiceState, CompletionRenderer
from server.api.request_stats import RequestStats
from server.api.sse import DONE, SSEResponse, sse
from server.api.tool_format import tool_choice_of
from server.api.tool_render import ToolChatRenderer
from server.engine.async_engine import EngineBusy, EngineDead
from server.engine.llm_engine import EngineRequest, UnknownAdapter
from server.engine.sequence import TokenRouting

log = logging.getLogger(__name__)

Renderer = CompletionRenderer | ChatRenderer
_ERRORS = {
    code: {"description": text, "content": {"application/json": {}}}
    for code, text in [
        (400, "bad parameters, prompt too long"), (401, "bad API key"), (404, "unknown model"),
        (413, "body too large"), (429, "queue full (Retry-After)"), (503, "starting or draining (Retry-After)"),
    ]
}
_STREAMED = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE chunks when stream is true"}}


def openai_routes(ctx: ServerContext) -> APIRouter:
    router = APIRouter(prefix="/v1", responses=_ERRORS)
    tokenizer = ctx.engine.tokenizer

    @router.get("/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return ModelList(
            data=[
                ModelInfo(
                    id=c.id, created=c.created, root=c.id, parent=c.parent, loraplex_kind=c.kind, rank=c.rank,
                    target_modules=list(c.target_modules) if c.target_modules else None, resident=c.resident,
                )
                for c in ctx.models.cards()
            ]
        )

    @router.post("/completions", response_model=CompletionResponse, responses=_STREAMED)
    async def completions(body: CompletionRequest, request: Request):
        adapter, router_name = ctx.models.resolve(body.model)
        rid = f"cmpl-{uuid.uuid4().hex}"
        reqs = completion_requests(body, tokenizer, ctx.limits, rid, adapter)
        await attach_grammar(ctx.grammars, body, reqs)
        renderer = CompletionRenderer(
            rid, int(time.time()), body.model, tokenizer, body.include_usage, body.logprobs is not None,
            echo=Echo.of(body, [r.prompt_ids for r in reqs], tokenizer),
        )
        # a router chooses once per request, on its first prompt
        route = (router_name, lambda: tokenizer.decode(reqs[0].prompt_ids, skip_special_tokens=True))
        return await _serve(ctx, request, reqs, renderer, body.stream, route if router_name else None)

    @router.post("/chat/completions", response_model=ChatCompletionResponse, responses=_STREAMED)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        adapter, router_name = ctx.models.resolve(body.model)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        req = chat_request(body, tokenizer, ctx.limits, rid, adapter)
        tools = tool_choice_of(body)
        await attach_grammar(ctx.grammars, body, [req], tools)
        chat_renderer = ChatRenderer if tools is None else partial(ToolChatRenderer, tools)
        renderer = chat_renderer(rid, int(time.time()), body.model, tokenizer, body.include_usage, body.logprobs)
        users = [m for m in body.messages if m.role == "user"]  # routed on the last user message, not the template
        route = (router_name, lambda: _text_of(users[-1].content) if users else "")
        return await _serve(ctx, request, [req], renderer, body.stream, route if router_name else None)

    return router


def _text_of(content) -> str:
    return content if isinstance(content, str) else " ".join(part.text for part in content or [])


async def _route(
    ctx: ServerContext, router_name: str, text: str, reqs: list[EngineRequest]
) -> tuple[RouteDecision, list[EngineRequest]]:
    """The decision and new requests carrying it; the given requests are left as they were."""
    try:
        decision = await ctx.routers.route_async(router_name, text)
    except EngineBusy as e:
        raise ServiceUnavailable(f"the server is busy: {e}", code="engine_busy", headers=ctx.state.retry_after) from e
    # several adapters: the weighted sum of their deltas; per-token routing: candidates mixed token by token
    per_token = TokenRouting(*decision.routing) if decision.routing is not None and decision.adapters else None
    mixture = decision.adapters if len(decision.adapters) > 1 or per_token else ()
    routed = [dataclasses.replace(r, adapter=None if mixture else decision.adapter, mixture=mixture, routing=per_token)
              for r in reqs]
    for name, _ in decision.adapters or ((None, 1.0),):
        ctx.metrics.router_choices.labels(router_name, name or "").inc()
    return decision, routed


def _route_info(ctx: ServerContext, decision: RouteDecision) -> tuple[dict, dict[str, str]]:
    """Body field and header telling the client which adapter(s) a router chose."""
    body = {"adapter": decision.adapter, "router": decision.router, "scores": decision.scores,
            "fell_back": decision.fell_back}
    if decision.routing is not None:  # Arrow per token: the candidates each token routes among
        body["per_token"] = {"candidates": [a for a, _ in decision.adapters], "top_k": decision.routing[0],
                             "temperature": decision.routing[1]}
    elif len(decision.adapters) > 1:
        body["mixture"] = [{"adapter": a, "weight": round(w, 4)} for a, w in decision.adapters]
    names = [a for a, _ in decision.adapters] if decision.adapters else [ctx.models.base_name]
    return body, {"x-loraplex-adapter": ",".join(header_names.encode(n) for n in names)}


def _check(ctx: ServerContext, reqs: list[EngineRequest]) -> None:
    """The engine's own check, once per prompt, while a 4xx can still be sent."""
    for r in reqs:
        try:
            ctx.engine.check(r)
        except ValueError as e:
            raise _request_error(e) from e


def _request_error(e: Exception) -> APIError:
    if isinstance(e, UnknownAdapter):
        return NotFound(str(e), "model", "model_not_found")
    if isinstance(e, ValueError):
        return BadRequest(str(e))
    if isinstance(e, EngineDead):
        return ServiceUnavailable("the engine stopped; the server is restarting", code="engine_dead")
    log.error("request failed", exc_info=e)
    return InternalError("internal server error")


async def _serve(
    ctx: ServerContext, request: Request, reqs: list[EngineRequest], renderer: Renderer, stream: bool,
    route: tuple[str, Callable[[], str]] | None = None,
):
    _check(ctx, reqs)
    if not ctx.engine.alive:
        raise ServiceUnavailable("the engine stopped; the server is restarting", code="engine_dead")
    ticket = ctx.state.admit(sum(r.params.n for r in reqs))  # before routing: a refused request costs no pass
    try:
        decision = None
        if route is not None:
            decision, reqs = await _route(ctx, route[0], route[1](), reqs)
            _check(ctx, reqs)  # the chosen adapter must fit too
        lora = reqs[0].lora()  # metrics label: the adapter, or a mixture's heaviest one
        label = max(lora, key=lambda p: p[1])[0] if lora else ctx.models.base_name
        stats = RequestStats(ctx.metrics, label, sum(len(r.prompt_ids) for r in reqs))
        route_body, route_headers = _route_info(ctx, decision) if decision else (None, {})
        gen = Generation(ctx.engine, reqs, ticket, stats)
    except BaseException:
        ticket.close()
        raise
    if stream:
        response = SSEResponse(_events(gen, renderer), on_close=gen.close)
        response.headers.update(route_headers)
        return response
    try:
        choices = await unless_disconnected(_collect(gen), request.receive)
    except ClientGone:
        return Response(status_code=499)  # nobody reads it; the status is for the access log and metrics
    finally:
        await gen.close()
    result = renderer.response(choices, _usage(stats))
    if decision is None:
        return result
    return JSONResponse({**result.model_dump(), "loraplex": route_body}, headers=route_headers)


def _engine_error(d) -> APIError:
    """A sequence the engine ended with an error: its adapter is broken (400), or our bug (500)."""
    if d.error_code == "adapter_load_failed":
        return BadRequest(d.error, "model", code="adapter_load_failed")
    return InternalError(f"generation failed: {d.error}", code=d.error_code or "internal_error")


async def _collect(gen: Generation) -> dict[int, ChoiceState]:
    choices = {i: ChoiceState() for i in range(gen.num_choices)}
    try:
        async with aclosing(gen.deltas()) as deltas:
            async for choice, d in deltas:
                if d.finish_reason == "error":
                    raise _engine_error(d)
                choices[choice].add(d)
    except (ValueError, EngineDead) as e:  # the engine thread refused it (something changed since our check)
        raise _request_error(e) from e
    return choices


async def _events(gen: Generation, renderer: Renderer) -> AsyncIterator[str]:
    if isinstance(renderer, ChatRenderer):
        for chunk in renderer.opening(gen.num_choices):
            yield chunk
    try:
        async with aclosing(gen.deltas()) as deltas:
            async for choice, d in deltas:
                if d.finish_reason == "error":
                    e = _engine_error(d)
                    yield sse(error_body(e.message, e.type, e.param, e.code))
                    yield DONE
                    return
                for chunk in renderer.chunks(choice, d):
                    yield chunk
    except Exception as e:
        err = _request_error(e)
        yield sse(error_body(err.message, err.type, err.param, err.code))
        yield DONE
        return
    if renderer.include_usage:
        yield renderer.usage_chunk(renderer.OBJECT, _usage(gen.stats))
    yield DONE


def _usage(stats: RequestStats) -> Usage:
    done = stats.completion_tokens
    return Usage(
        prompt_tokens=stats.prompt_tokens, completion_tokens=done, total_tokens=stats.prompt_tokens + done,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=stats.cached_tokens),
        completion_tokens_details=CompletionTokensDetails(),
    )
