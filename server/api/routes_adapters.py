"""Run-time adapter loading with vLLM's routes and bodies: off unless --enable-adapter-admin, loads only
from --allowed-adapter-root directories (vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING is the precedent)."""

import asyncio
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from server.adapters.types import AdapterError
from server.api.context import ServerContext
from server.api.errors import BadRequest, Forbidden, NotFound
from server.api.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest

_ADMIN_ERRORS = {
    code: {"description": text, "content": {"application/json": {}}}
    for code, text in [(400, "invalid adapter"), (401, "bad admin key"), (403, "admin off or path not allowed"),
                       (404, "no such adapter")]
}


class PathNotAllowed(Forbidden):
    code = "adapter_path_not_allowed"


def allowed_path(raw: str, roots: list[str]) -> tuple[Path, Path]:
    """(the real path, its allowed root) if it lies under one, else Forbidden. The registry re-checks every
    file it opens against the root without following symlinks."""
    if not roots:
        raise PathNotAllowed("run-time adapter loading needs --allowed-adapter-root", "lora_path")
    try:
        path = Path(raw).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a loop of symlinks, a NUL byte
        raise BadRequest(f"lora_path {raw!r} cannot be resolved: {e}", "lora_path") from None
    for root in roots:
        real_root = Path(root).expanduser().resolve()
        if path.is_relative_to(real_root):
            return path, real_root
    raise PathNotAllowed(f"lora_path {raw!r} is outside the allowed adapter roots", "lora_path")


def adapter_routes(ctx: ServerContext) -> APIRouter:
    router = APIRouter(prefix="/v1", responses=_ADMIN_ERRORS)
    engine = ctx.engine

    def require_admin() -> None:
        if not ctx.settings.enable_adapter_admin:
            raise Forbidden("adapter admin is off: start the server with --enable-adapter-admin",
                            code="adapter_admin_disabled")

    @router.post("/load_lora_adapter", response_class=PlainTextResponse)
    async def load_lora_adapter(body: LoadLoRAAdapterRequest) -> str:
        require_admin()
        path, root = allowed_path(body.lora_path, ctx.settings.allowed_adapter_roots)
        if ctx.models.reserved(body.lora_name):
            raise BadRequest(f"{body.lora_name!r} names the base model or a router", "lora_name")
        try:  # reads and checks every file once, off the event loop
            ref = await asyncio.to_thread(engine.registry.register, body.lora_name, path, root=root)
        except AdapterError as e:
            raise BadRequest(str(e), "lora_path", code="invalid_adapter") from None

        def add() -> None:  # on the engine thread: Arrow reads its weights and measures it
            try:
                ctx.routers.adapter_added(ref)
            except BaseException:
                _unload(ref.name)  # a failed load leaves nothing behind
                raise

        try:
            await engine.call(add)
        except AdapterError as e:
            raise BadRequest(str(e), "lora_path", code="invalid_adapter") from None
        return f"Success: LoRA adapter '{body.lora_name}' added successfully."

    @router.post("/unload_lora_adapter", response_class=PlainTextResponse)
    async def unload_lora_adapter(body: UnloadLoRAAdapterRequest) -> str:
        require_admin()
        try:  # on the engine thread; requests already running keep the adapter until they finish
            await engine.call(lambda: _unload(body.lora_name))
        except KeyError:
            raise NotFound(f"The adapter `{body.lora_name}` is not loaded.", "lora_name", "model_not_found") from None
        return f"Success: LoRA adapter '{body.lora_name}' removed successfully."

    def _unload(name: str) -> None:  # on the engine thread
        engine.unregister_now(name)  # KeyError: not registered
        ctx.routers.adapter_removed(name)

    return router
