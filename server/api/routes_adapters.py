"""Run-time adapter loading with vLLM's routes and bodies, only from --allowed-adapter-root directories."""

import asyncio
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from server.adapters.types import AdapterError
from server.api.context import ServerContext
from server.api.errors import APIError, BadRequest, NotFound
from server.api.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest


class Forbidden(APIError):
    status = 403
    type = "permission_error"
    code = "adapter_path_not_allowed"


def allowed_path(raw: str, roots: list[str]) -> Path:
    """The real path (symlinks and '..' resolved) if it lies under an allowed root, else Forbidden."""
    if not roots:
        raise Forbidden("run-time adapter loading is off: start the server with --allowed-adapter-root", "lora_path")
    path = Path(raw).expanduser().resolve()
    for root in roots:
        if path.is_relative_to(Path(root).expanduser().resolve()):
            return path
    raise Forbidden(f"lora_path {raw!r} is outside the allowed adapter roots", "lora_path")


def adapter_routes(ctx: ServerContext) -> APIRouter:
    router = APIRouter(prefix="/v1")
    registry = ctx.engine.engine.registry

    @router.post("/load_lora_adapter", response_class=PlainTextResponse)
    async def load_lora_adapter(body: LoadLoRAAdapterRequest) -> str:
        path = allowed_path(body.lora_path, ctx.settings.allowed_adapter_roots)
        if ctx.models.reserved(body.lora_name):
            raise BadRequest(f"{body.lora_name!r} names the base model or a router", "lora_name")
        try:  # reads adapter_config.json only; weights load on first use
            ref = await asyncio.to_thread(registry.register, body.lora_name, path)
        except AdapterError as e:
            raise BadRequest(str(e), "lora_path", code="invalid_adapter") from None
        # on the engine thread: Arrow reads its weights (the host cache is the engine's) and measures it
        await ctx.engine.call(lambda llm: ctx.routers.adapter_added(ref, llm))
        return f"Success: LoRA adapter '{body.lora_name}' added successfully."

    @router.post("/unload_lora_adapter", response_class=PlainTextResponse)
    async def unload_lora_adapter(body: UnloadLoRAAdapterRequest) -> str:
        try:  # requests already admitted keep the adapter until they finish
            registry.unregister(body.lora_name)
            ctx.routers.adapter_removed(body.lora_name)
        except KeyError:
            raise NotFound(f"The adapter `{body.lora_name}` is not loaded.", "lora_name", "model_not_found") from None
        return f"Success: LoRA adapter '{body.lora_name}' removed successfully."

    return router
