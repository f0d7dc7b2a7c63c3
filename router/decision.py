"""What a router tells the engine and the API: the adapter(s) for a request, and why."""

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RouteDecision:
    router: str  # the router's model name, e.g. "auto"
    adapters: tuple[tuple[str, float], ...]  # (adapter name, mixture weight); empty = the base model
    scores: dict[str, float] = field(default_factory=dict)  # top candidates and their scores
    fell_back: bool = False  # True when no candidate reached the router's confidence threshold
    # (top_k, temperature[, levels]) when `adapters` are candidates every token routes among (Arrow per token),
    # their weights unused; levels: each candidate's mean |cos| on generic text (mixed=base; engine TokenRouting);
    # None: `adapters` are applied with their weights
    routing: tuple | None = None

    @property
    def adapter(self) -> str | None:
        """The single adapter of a k = 1 decision (None: the base model)."""
        return self.adapters[0][0] if self.adapters else None
