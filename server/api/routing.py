"""Routers exposed as model names (`--router NAME=KIND`): built once, kept in step with the registry.

Adapters are added on the engine thread and removed on it; requests route on the event loop. One lock
guards the routers' state; Arrow's model passes (routing and calibration) run outside it.
"""

import logging
import threading

from router.arrow import NEUTRAL_PROMPTS, ArrowOptions, ArrowRouter
from router.decision import RouteDecision
from router.embedding import EmbeddingRouter
from router.prototypes import adapter_prototypes
from router.rules import RulesRouter
from server.adapters.types import AdapterError, AdapterRef
from server.engine.async_engine import AsyncEngine, EngineBusy, EngineDead

log = logging.getLogger(__name__)
KINDS = ("embedding", "rules:PATH", "arrow[:top_k=K,temperature=T,threshold=S]")
Router = EmbeddingRouter | RulesRouter | ArrowRouter


def build_router(engine: AsyncEngine, name: str, kind: str) -> Router:
    if kind == "embedding":
        return EmbeddingRouter(name, engine.token_embeddings())
    if kind.startswith("rules:"):
        return RulesRouter.from_file(name, kind.removeprefix("rules:"))
    if kind == "arrow" or kind.startswith("arrow:"):
        return ArrowRouter(name, ArrowOptions.parse(kind.removeprefix("arrow").removeprefix(":")))
    raise ValueError(f"--router {name}={kind}: unknown kind (available: {', '.join(KINDS)})")


class Routers:
    def __init__(self, engine: AsyncEngine, specs: dict[str, str]):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self._lock = threading.RLock()
        self.routers: dict[str, Router] = {name: build_router(engine, name, kind) for name, kind in specs.items()}
        for ref in engine.registry:
            self._add(ref)
        self._calibrate()  # before serving: the engine runs no step yet

    def adapter_added(self, ref: AdapterRef) -> None:
        """On the engine thread (Arrow reads weights through the engine's host cache and runs passes)."""
        try:
            self._add(ref)
            self._calibrate()
        except BaseException:
            self.adapter_removed(ref.name)
            raise

    def _calibrate(self) -> None:
        """Arrow's generic-text reference for adapters added since the last call: one set of passes for all."""
        with self._lock:
            arrows = [r for r in self.routers.values() if isinstance(r, ArrowRouter) and r.uncalibrated()]
            if not arrows:
                return
            keys = set().union(*(r.feature_keys(r.uncalibrated()) for r in arrows))
        limit = min(arrows[0].options.max_tokens, self.engine.max_batch_tokens)
        neutral = [self.engine.features_now(self.tokenizer(t)["input_ids"][:limit], keys) for t in NEUTRAL_PROMPTS]
        with self._lock:
            for r in arrows:
                r.calibrate(neutral)

    def _add(self, ref: AdapterRef) -> None:
        """Embeds its examples, and for Arrow reads its weights once for the prototypes."""
        examples = [self.tokenizer(t)["input_ids"] for t in ref.routing_texts]
        arrows = [r for r in self.routers.values() if isinstance(r, ArrowRouter)]
        prototypes = {}
        if arrows:
            try:
                w = self.engine.adapter_weights(ref)
                prototypes = adapter_prototypes(w.a, w.b)
            except AdapterError as e:  # its requests will fail with this message; routing skips it
                log.warning("arrow: no prototypes for %s: %s", ref.name, e)
        with self._lock:
            for r in self.routers.values():
                if isinstance(r, EmbeddingRouter):
                    r.add(ref.name, examples)
                elif isinstance(r, ArrowRouter):
                    r.add(ref.name, prototypes)

    def adapter_removed(self, name: str) -> None:
        with self._lock:
            for r in self.routers.values():
                if isinstance(r, EmbeddingRouter | ArrowRouter):
                    r.remove(name)

    def needs_engine(self, name: str) -> bool:
        return isinstance(self.routers[name], ArrowRouter)

    def route(self, name: str, text: str) -> RouteDecision:
        """Routers that read only the prompt's text or tokens; Arrow goes through route_async."""
        r = self.routers[name]
        if isinstance(r, RulesRouter):
            return r.route(text)
        if isinstance(r, ArrowRouter):
            ids = self._ids(r, text)
            with self._lock:
                keys = r.feature_keys()
            features = self.engine.features_now(ids, keys) if ids else {}
            with self._lock:
                return r.route(features)
        ids = self.tokenizer(text)["input_ids"]
        with self._lock:
            return r.route(ids)

    async def route_async(self, name: str, text: str) -> RouteDecision:
        """As route, with Arrow's routing pass run on the engine thread between steps."""
        r = self.routers[name]
        if not isinstance(r, ArrowRouter):
            return self.route(name, text)
        with self._lock:
            keys = r.feature_keys()
        ids = self._ids(r, text)
        features = {}
        if ids and keys:
            try:
                features = await self.engine.call(lambda: self.engine.features_now(ids, keys))
            except RuntimeError as e:  # no pool room for the pass right now: fall back rather than fail
                if isinstance(e, EngineBusy | EngineDead):
                    raise
                log.warning("arrow routing pass skipped: %s", e)
        with self._lock:  # an adapter added since the pass began is not scored; one removed is gone
            return r.route(features)

    def _ids(self, r: ArrowRouter, text: str) -> list[int]:
        limit = min(r.options.max_tokens, self.engine.max_batch_tokens)
        return self.tokenizer(text)["input_ids"][:limit]
