"""/health for orchestrators, /metrics for Prometheus. Neither needs the API key."""

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api.context import ServerContext
from server.api.state import Phase


def ops_routes(ctx: ServerContext) -> APIRouter:
    router = APIRouter()

    @router.get("/health", responses={503: {"description": "starting or draining"}})
    async def health() -> JSONResponse:
        phase = ctx.state.phase
        if phase is Phase.READY:
            return JSONResponse({"status": phase.value})
        return JSONResponse({"status": phase.value}, status_code=503, headers=ctx.state.retry_after)

    @router.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
