"""What a request's `model` names: the base model, an adapter, or a router.

Adapters and routers register here when their work lands; until then only the base name resolves.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass

from server.api.errors import ModelNotFound


@dataclass(frozen=True, slots=True)
class ModelCard:
    id: str
    kind: str  # "base" | "adapter" | "router"
    created: int  # unix seconds
    parent: str | None = None  # the base model, for adapters and routers


class ModelResolver:
    def __init__(
        self, base_name: str, adapters: Mapping[str, object] | None = None, routers: Mapping[str, str] | None = None
    ):
        self.base_name = base_name
        self.created = int(time.time())
        self._adapters = dict(adapters or {})  # name -> adapter record (owned by the adapter work)
        self._routers = dict(routers or {})  # name -> router kind
        names = [base_name, *self._adapters, *self._routers]
        clash = {n for n in names if names.count(n) > 1}
        if clash:
            raise ValueError(f"model names must be unique: {sorted(clash)}")

    def resolve(self, name: str) -> tuple[str | None, str | None]:
        """(adapter, router) for a request's `model`; (None, None) is the base model."""
        if name == self.base_name:
            return None, None
        if name in self._adapters:
            return name, None
        if name in self._routers:
            return None, name
        raise ModelNotFound(name)

    def cards(self) -> list[ModelCard]:
        cards = [ModelCard(self.base_name, "base", self.created)]
        cards += [ModelCard(n, "adapter", self.created, self.base_name) for n in self._adapters]
        cards += [ModelCard(n, "router", self.created, self.base_name) for n in self._routers]
        return cards
