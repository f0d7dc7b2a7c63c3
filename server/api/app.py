"""The FastAPI app around an AsyncEngine.

The caller owns the engine thread (start it before serving, shut it down after): an app's lifespan
may run more than once (test clients do), and a thread cannot be started twice.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from server.api.auth import ApiKeyAuth
from server.api.context import ServerContext
from server.api.errors import install_error_handlers
from server.api.inputs import Limits
from server.api.limits import BodySizeLimit
from server.api.metrics import Metrics
from server.api.models import ModelResolver
from server.api.routes_adapters import adapter_routes
from server.api.routes_openai import openai_routes
from server.api.routes_ops import ops_routes
from server.api.routing import Routers
from server.api.settings import ServerSettings
from server.api.state import ServerState
from server.api.status_counter import StatusCounter
from server.api.trusted_host import TrustedHost
from server.engine.async_engine import AsyncEngine

log = logging.getLogger(__name__)


def build_app(engine: AsyncEngine, settings: ServerSettings) -> FastAPI:
    routers = Routers(engine, settings.routers)  # ValueError: a bad --router
    state = ServerState(settings.max_queue, settings.retry_after_s)
    metrics = Metrics(engine.pool_stats, state, adapter_stats=engine.adapter_stats,
                      adapters_pinned=engine.adapters_pinned)
    engine.on_adapter_load(metrics.adapter_load_time.observe)
    ctx = ServerContext(
        engine=engine,
        settings=settings,
        state=state,
        metrics=metrics,
        models=ModelResolver(
            settings.served_model_name or engine.model_name, engine.registry, settings.routers, engine.is_resident
        ),
        limits=Limits(
            engine.max_model_len, settings.max_tokens_cap, settings.max_prompts, settings.max_n,
            settings.max_seqs_per_request, settings.max_stop, settings.max_stop_chars, settings.max_logprob_entries,
        ),
        routers=routers,
        grammars=engine.grammar_compiler(),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        asyncio.get_running_loop().set_default_executor(engine.worker_pool())  # what to_thread runs on
        state.ready()
        log.info("serving %s", ctx.models.base_name)
        yield

    # outermost first: count every request, check the Host, answer CORS preflights, then check the key,
    # then the body size and read timeout
    middleware = [Middleware(StatusCounter, metrics=metrics), Middleware(TrustedHost, allowed=settings.trusted_hosts())]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["*"],
            )
        )
    if settings.api_key or settings.admin_key:
        middleware.append(Middleware(ApiKeyAuth, api_key=settings.api_key, admin_key=settings.admin_key,
                                     protected=protected_paths(settings)))
    middleware.append(
        Middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    )

    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="loraplex", version="0.1.0", lifespan=lifespan, middleware=middleware, **docs)
    app.state.loraplex = ctx
    install_error_handlers(app)
    app.include_router(ops_routes(ctx))
    app.include_router(openai_routes(ctx))
    app.include_router(adapter_routes(ctx))
    return app


def protected_paths(settings: ServerSettings) -> tuple[str, ...]:
    """What the API key guards: the API, /metrics unless public, the docs when they are on."""
    paths = ["/v1"]
    if not settings.metrics_public:
        paths.append("/metrics")
    if settings.docs:
        paths += ["/docs", "/redoc", "/openapi.json"]
    return tuple(paths)
