"""What a request's `model` names: the base model, an adapter of the registry, or a router."""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from server.adapters.registry import AdapterRegistry
from server.api.errors import ModelNotFound


@dataclass(frozen=True, slots=True)
class ModelCard:
    id: str
    kind: str  # "base" | "adapter" | "router"
    created: int  # unix seconds
    parent: str | None = None  # the base model, for adapters and routers
    rank: int | None = None  # adapters only
    target_modules: tuple[str, ...] | None = None
    resident: bool | None = None  # adapters: pages in the pool now


class ModelResolver:
    def __init__(
        self, base_name: str, registry: AdapterRegistry | None = None, routers: Mapping[str, str] | None = None,
        resident: Callable[[int], bool] = lambda _id: False,
    ):
        self.base_name = base_name
        self.created = int(time.time())
        self.registry = registry
        self._routers = dict(routers or {})  # name -> router kind
        self._resident = resident
        reserved = {base_name, *self._routers}
        if len(reserved) != 1 + len(self._routers):
            raise ValueError(f"router names must differ from the base model's name {base_name!r}")
        if registry is not None and (clash := sorted(n for n in reserved if n in registry)):
            raise ValueError(f"model names must be unique: {clash}")

    def reserved(self, name: str) -> bool:
        """Names an adapter may not take: the base model's and the routers'."""
        return name == self.base_name or name in self._routers

    def resolve(self, name: str) -> tuple[str | None, str | None]:
        """(adapter, router) for a request's `model`; (None, None) is the base model."""
        if name == self.base_name:
            return None, None
        if name in self._routers:
            return None, name
        if self.registry is not None and name in self.registry:
            return name, None
        raise ModelNotFound(name)

    def cards(self) -> list[ModelCard]:
        cards = [ModelCard(self.base_name, "base", self.created)]
        for ref in self.registry or []:
            cards.append(ModelCard(ref.name, "adapter", self.created, self.base_name, ref.rank, ref.target_modules,
                                   self._resident(ref.id)))
        cards += [ModelCard(n, "router", self.created, self.base_name) for n in self._routers]
        return cards
