"""/health for orchestrators (never needs a key), /metrics for Prometheus (the API key unless --metrics-public)."""

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api.context import ServerContext
from server.api.state import Phase


def ops_routes(ctx: ServerContext) -> APIRouter:
    router = APIRouter()

    @router.get("/health", responses={503: {"description": "starting, draining, or the engine is failing"}})
    async def health() -> JSONResponse:
        phase = ctx.state.phase
        if not ctx.engine.alive:
            return JSONResponse({"status": "failed", "reason": "the engine thread stopped"}, status_code=503)
        if not ctx.engine.healthy:
            return JSONResponse({"status": "failing", "reason": f"the last {ctx.engine.failed_steps} engine steps "
                                 "failed"}, status_code=503, headers=ctx.state.retry_after)
        if phase is Phase.READY:
            return JSONResponse({"status": phase.value})
        return JSONResponse({"status": phase.value}, status_code=503, headers=ctx.state.retry_after)

    @router.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
