"""Routers exposed as model names (`--router NAME=KIND`): built once, kept in step with the registry.

Speaks only the router contract (router/contract.py): adapters reach a router as `AdapterInfo`,
requests as a `RouteQuery` holding what the router `needs`, and a `RouteDecision` comes back.
Adapters are added and removed on the engine thread; requests route on the event loop. One lock
guards the routers' state; the base-model passes that feature routers read run outside it.
"""

import logging
import threading
from collections.abc import Iterable

from router.arrow_token import ProxyInputs
from router.contract import AdapterInfo, Features, RouteQuery, TaskRouter
from router.decision import RouteDecision
from router.kinds import build_router
from router.prototypes import adapter_prototypes
from server.adapters.types import AdapterError, AdapterRef
from server.engine.async_engine import AsyncEngine, EngineBusy, EngineDead

log = logging.getLogger(__name__)


class Routers:
    def __init__(self, engine: AsyncEngine, specs: dict[str, str]):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self._lock = threading.RLock()
        self.routers: dict[str, TaskRouter] = {
            name: build_router(name, kind, engine.token_embeddings, self._proxy, self._tokenize)
            for name, kind in specs.items()}
        for ref in engine.registry:
            self._add(ref)
        self._calibrate()  # before serving: the engine runs no step yet

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def _proxy(self) -> ProxyInputs:
        gains, eps = self.engine.norm_gains()
        return ProxyInputs(self.engine.token_embeddings(), gains, eps, lambda t: self.tokenizer(t)["input_ids"])

    def adapter_added(self, ref: AdapterRef) -> None:
        """On the engine thread (prototypes read weights through the engine's host cache; calibration runs passes)."""
        try:
            self._add(ref)
            self._calibrate()
        except BaseException:
            self.adapter_removed(ref.name)
            raise

    def adapter_removed(self, name: str) -> None:
        with self._lock:
            for r in self.routers.values():
                r.adapter_removed(name)

    def _add(self, ref: AdapterRef) -> None:
        examples = tuple(tuple(self.tokenizer(t)["input_ids"]) for t in ref.routing_texts)
        prototypes = {}
        if any(r.needs == "features" for r in self.routers.values()):
            try:
                w = self.engine.adapter_weights(ref)
                prototypes = adapter_prototypes(w.a, w.b)
            except AdapterError as e:  # its requests will fail with this message; routing skips it
                log.warning("router: no prototypes for %s: %s", ref.name, e)
        info = AdapterInfo(ref.name, examples, prototypes, mixable=ref.format != "dora")
        with self._lock:
            for r in self.routers.values():
                r.adapter_added(info)

    def _calibrate(self) -> None:
        """Generic-text passes for adapters added since the last call: one set of passes per prompt set."""
        with self._lock:
            groups: dict[tuple[str, ...], list[TaskRouter]] = {}
            for r in self.routers.values():
                if r.uncalibrated():
                    groups.setdefault(r.calibration_prompts, []).append(r)
            plans = [(prompts, rs, set().union(*(r.feature_keys(r.uncalibrated()) for r in rs)))
                     for prompts, rs in groups.items()]
        for prompts, rs, keys in plans:
            n = max(self._limit(r) or 0 for r in rs) or None
            neutral = [self._features(tuple(self.tokenizer(text)["input_ids"][:n]), keys) for text in prompts]
            with self._lock:
                for r in rs:
                    r.calibrate(neutral)

    def _limit(self, r: TaskRouter) -> int | None:
        """The prompt tokens r reads; a feature router's routing pass must also fit one engine step."""
        if r.needs != "features":
            return r.max_prompt_tokens
        return min(r.max_prompt_tokens or self.engine.max_batch_tokens, self.engine.max_batch_tokens)

    def _features(self, ids: tuple[int, ...], keys) -> Features:
        return self.engine.features_now(list(ids), keys) if ids and keys else {}

    def _keys(self, rs: Iterable[TaskRouter]):
        with self._lock:
            return set().union(*(r.feature_keys() for r in rs if r.needs == "features"))

    def _query(self, r: TaskRouter, text: str, ids: tuple[int, ...], features: Features) -> RouteQuery:
        """What r needs, cut to its own prompt limit (features are causal: a prefix's rows are the prefix's)."""
        ids = ids[: self._limit(r)]
        if r.needs != "features":
            return RouteQuery(text, ids)
        return RouteQuery(text, ids, {k: x[: len(ids)] for k, x in features.items()})

    def route(self, name: str, text: str) -> RouteDecision:
        """Synchronously, the routing pass included (benchmarks, tests; the server uses route_async)."""
        return self.route_all(text, [name])[name]

    def route_all(self, text: str, names: list[str] | None = None) -> dict[str, RouteDecision]:
        """Several routers on one prompt, sharing one routing pass."""
        rs = [self.routers[n] for n in (names or self.routers)]
        ids = tuple(self.tokenizer(text)["input_ids"])
        n = max((self._limit(r) for r in rs if r.needs == "features"), default=0)
        features = self._features(ids[:n], self._keys(rs))
        with self._lock:
            return {r.name: r.choose(self._query(r, text, ids, features)) for r in rs}

    async def route_async(self, name: str, text: str) -> RouteDecision:
        """The routing pass of a feature router runs on the engine thread between steps."""
        r = self.routers[name]
        ids = tuple(self.tokenizer(text)["input_ids"])[: self._limit(r)]
        features: Features = {}
        if r.needs == "features" and ids and (keys := self._keys([r])):
            try:
                features = await self.engine.call(lambda: self.engine.features_now(list(ids), keys))
            except RuntimeError as e:  # no pool room for the pass right now: fall back rather than fail
                if isinstance(e, EngineBusy | EngineDead):
                    raise
                log.warning("routing pass skipped: %s", e)
        with self._lock:  # an adapter added since the pass began is not scored; one removed is gone
            return r.choose(self._query(r, text, ids, features))
