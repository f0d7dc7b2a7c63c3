"""Routers exposed as model names (`--router NAME=KIND`): built once, kept in step with the registry."""

import logging

from router.decision import RouteDecision
from router.embedding import EmbeddingRouter, read_examples
from router.rules import RulesRouter
from server.adapters.types import AdapterRef
from server.engine.llm_engine import LLMEngine

log = logging.getLogger(__name__)
KINDS = ("embedding", "rules:PATH")


class Routers:
    def __init__(self, engine: LLMEngine, specs: dict[str, str]):
        self.tokenizer = engine.tokenizer
        self.routers: dict[str, EmbeddingRouter | RulesRouter] = {}
        table = engine.runner.model.model.embed_tokens.weight
        for name, kind in specs.items():
            if kind == "embedding":
                self.routers[name] = EmbeddingRouter(name, table)
            elif kind.startswith("rules:"):
                self.routers[name] = RulesRouter.from_file(name, kind.removeprefix("rules:"))
            else:
                raise ValueError(f"--router {name}={kind}: unknown kind (available: {', '.join(KINDS)})")
        for ref in engine.registry:
            self.adapter_added(ref)

    def adapter_added(self, ref: AdapterRef) -> None:
        examples = [self.tokenizer(t)["input_ids"] for t in read_examples(ref.path)]
        for r in self.routers.values():
            if isinstance(r, EmbeddingRouter):
                r.add(ref.name, examples)

    def adapter_removed(self, name: str) -> None:
        for r in self.routers.values():
            if isinstance(r, EmbeddingRouter):
                r.remove(name)

    def route(self, name: str, text: str) -> RouteDecision:
        r = self.routers[name]
        return r.route(text) if isinstance(r, RulesRouter) else r.route(self.tokenizer(text)["input_ids"])
