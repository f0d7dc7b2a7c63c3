"""Start-up: the engine and its app built from settings, the adapters registered; `serve` and every Ray
replica build a server the same way."""

import gc
import logging
from typing import TYPE_CHECKING

from server.api.settings import ServerSettings
from server.config import EngineConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

    from server.engine.async_engine import AsyncEngine

log = logging.getLogger("loraplex")


def register_adapters(registry, adapters: dict[str, str], adapter_dirs: list[str]) -> None:
    """--adapter NAME=PATH must all be valid; --adapter-dir serves its good folders and logs the bad ones."""
    for name, path in adapters.items():
        registry.register(name, path)
    for d in adapter_dirs:
        refs = registry.register_dir(d, skip_invalid=True)
        log.info("registered %d adapters from %s", len(refs), d)


class FlagError(ValueError):
    """A flag that only turned out bad once the engine was up: an --adapter or a --router."""


def build_server(settings: ServerSettings, config: EngineConfig) -> "tuple[AsyncEngine, FastAPI]":
    """The engine (not started yet) and its app, as `serve` and every Ray replica build them."""
    from server.adapters.types import AdapterError
    from server.api import build_app
    from server.engine.async_engine import AsyncEngine
    from server.engine.llm_engine import LLMEngine

    llm = LLMEngine.from_config(config)  # logs "engine ready"
    try:
        register_adapters(llm.registry, settings.adapters, settings.adapter_dirs)
        engine = AsyncEngine(llm)
        app = build_app(engine, settings)
    except (AdapterError, ValueError) as e:
        raise FlagError(str(e)) from e
    freeze_startup_objects()
    return engine, app


def freeze_startup_objects() -> None:
    """Take what start-up built (model, tokenizer, app: ~400k objects that live as long as the process) out of
    the collector's reach: each full collection walked them all, ~0.2 s with the GIL held while the engine
    thread waited for it. vLLM freezes after start-up too. Cycles made later are collected as before."""
    gc.collect()
    gc.freeze()
