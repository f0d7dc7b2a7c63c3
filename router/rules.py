"""Deterministic routing for operators: ordered regex -> adapter rules from a JSON file. No torch here.

File format: {"rules": [{"pattern": "^Review:", "adapter": "sentiment"}, ...], "default": null}
The first rule whose pattern matches the prompt text wins; no match falls back to "default"
(an adapter name, or null for the base model).
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from router.contract import AdapterInfo, RouteQuery, TaskRouter
from router.decision import RouteDecision


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: re.Pattern
    adapter: str


class RulesRouter(TaskRouter):
    needs = "text"

    def __init__(self, name: str, rules: list[Rule], default: str | None = None):
        self.name = name
        self.rules = rules
        self.default = default

    @classmethod
    def from_file(cls, name: str, path: str | Path) -> "RulesRouter":
        raw = json.loads(Path(path).read_text())
        rules = []
        for i, r in enumerate(raw.get("rules", [])):
            try:
                rules.append(Rule(re.compile(r["pattern"]), str(r["adapter"])))
            except (KeyError, TypeError, re.error) as e:
                raise ValueError(f"{path}: rule {i} is invalid: {e}") from None
        return cls(name, rules, raw.get("default"))

    def adapter_added(self, adapter: AdapterInfo) -> None:
        """Rules name their adapters; one not registered fails the request as unknown, like a named one."""

    def adapter_removed(self, name: str) -> None:
        pass

    def choose(self, query: RouteQuery) -> RouteDecision:
        return self.route(query.text)

    def route(self, prompt: str) -> RouteDecision:
        for rule in self.rules:
            if rule.pattern.search(prompt):
                return RouteDecision(self.name, ((rule.adapter, 1.0),), {rule.adapter: 1.0})
        fallback = ((self.default, 1.0),) if self.default else ()
        return RouteDecision(self.name, fallback, {}, fell_back=True)
