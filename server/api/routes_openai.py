"""/v1/completions, /v1/chat/completions and /v1/models."""

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from router.decision import RouteDecision
from server.api.context import ServerContext
from server.api.errors import BadRequest, InternalError, error_body
from server.api.generation import ClientGone, Generation, unless_disconnected
from server.api.inputs import chat_request, completion_requests
from server.api.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelInfo,
    ModelList,
    Usage,
)
from server.api.render import ChatRenderer, ChoiceState, CompletionRenderer
from server.api.request_stats import RequestStats
from server.api.sse import DONE, SSEResponse, sse
from server.engine.llm_engine import EngineRequest

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
    tokenizer = ctx.engine.engine.tokenizer

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
        decision = None
        if router_name:  # one choice per request, made on its first prompt
            text = tokenizer.decode(reqs[0].prompt_ids, skip_special_tokens=True)
            decision = await _route(ctx, router_name, text, reqs)
        renderer = CompletionRenderer(
            rid, int(time.time()), body.model, tokenizer, body.include_usage, body.logprobs is not None
        )
        return await _serve(ctx, request, reqs, renderer, body.stream, decision)

    @router.post("/chat/completions", response_model=ChatCompletionResponse, responses=_STREAMED)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        adapter, router_name = ctx.models.resolve(body.model)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        req = chat_request(body, tokenizer, ctx.limits, rid, adapter)
        decision = None
        if router_name:  # routed on the last user message, not the chat template around it
            users = [m for m in body.messages if m.role == "user"]
            text = _text_of(users[-1].content) if users else ""
            decision = await _route(ctx, router_name, text, [req])
        renderer = ChatRenderer(rid, int(time.time()), body.model, tokenizer, body.include_usage, body.logprobs)
        return await _serve(ctx, request, [req], renderer, body.stream, decision)

    return router


def _text_of(content) -> str:
    return content if isinstance(content, str) else " ".join(part.text for part in content or [])


async def _route(ctx: ServerContext, router_name: str, text: str, reqs: list[EngineRequest]) -> RouteDecision:
    decision = await ctx.routers.route_async(router_name, text, ctx.engine)
    for r in reqs:
        if len(decision.adapters) > 1:  # served as the weighted sum of their deltas
            r.adapter, r.mixture = None, decision.adapters
        else:
            r.adapter = decision.adapter
    for name, _ in decision.adapters or ((None, 1.0),):
        ctx.metrics.router_choices.labels(router_name, name or "").inc()
    return decision


def _route_info(ctx: ServerContext, decision: RouteDecision) -> tuple[dict, dict[str, str]]:
    """Body field and header telling the client which adapter(s) a router chose."""
    body = {"adapter": decision.adapter, "router": decision.router, "scores": decision.scores,
            "fell_back": decision.fell_back}
    if len(decision.adapters) > 1:
        body["mixture"] = [{"adapter": a, "weight": round(w, 4)} for a, w in decision.adapters]
    header = ",".join(a for a, _ in decision.adapters) if decision.adapters else ctx.models.base_name
    return body, {"x-loraplex-adapter": header}


async def _serve(
    ctx: ServerContext, request: Request, reqs: list[EngineRequest], renderer: Renderer, stream: bool,
    decision: RouteDecision | None = None,
):
    for r in reqs:
        try:
            ctx.engine.engine.check_request(r)  # now, while a 400 can still be sent
        except ValueError as e:
            raise BadRequest(str(e)) from e
    ticket = ctx.state.admit()
    lora = reqs[0].lora()  # metrics label: the adapter, or a mixture's heaviest one
    label = max(lora, key=lambda p: p[1])[0] if lora else ctx.models.base_name
    stats = RequestStats(ctx.metrics, label, sum(len(r.prompt_ids) for r in reqs))
    gen = Generation(ctx.engine, reqs, ticket, stats)
    route_body, route_headers = _route_info(ctx, decision) if decision else (None, {})
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


def _engine_error(d) -> BadRequest | InternalError:
    """A sequence the engine ended with an error: its adapter is broken (400), or our bug (500)."""
    if d.error_code == "adapter_load_failed":
        return BadRequest(d.error, "model", code="adapter_load_failed")
    return InternalError(f"generation failed: {d.error}")


async def _collect(gen: Generation) -> dict[int, ChoiceState]:
    choices = {i: ChoiceState() for i in range(gen.num_choices)}
    try:
        async with aclosing(gen.deltas()) as deltas:
            async for choice, d in deltas:
                if d.finish_reason == "error":
                    raise _engine_error(d)
                choices[choice].add(d)
    except ValueError as e:  # the engine thread's own check refused it: something changed since ours
        raise BadRequest(str(e)) from e
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
    except ValueError as e:
        yield sse(error_body(str(e), BadRequest.type))
        yield DONE
        return
    except Exception:
        log.exception("stream %s failed", renderer.request_id)
        yield sse(error_body("internal server error", InternalError.type))
        yield DONE
        return
    if renderer.include_usage:
        yield renderer.usage_chunk(renderer.OBJECT, _usage(gen.stats))
    yield DONE


def _usage(stats: RequestStats) -> Usage:
    done = stats.completion_tokens
    return Usage(prompt_tokens=stats.prompt_tokens, completion_tokens=done, total_tokens=stats.prompt_tokens + done)
