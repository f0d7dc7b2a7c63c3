"""The one contract every task router keeps: what it reads, how it learns of adapters, what it returns.

The API (server/api/routing.py) speaks only this: it tells a router of each adapter registered or
removed (`AdapterInfo`: tokenized example prompts and, for routers whose `needs` is "features", the
adapter's Arrow prototypes), builds a `RouteQuery` with what the router `needs` (the prompt's text,
its tokens, or the base model's projection inputs for the keys in `feature_keys()`), and gets back an
immutable `RouteDecision`. A router never sees or changes the request itself.

Feature routers are calibrated on generic text when adapters arrive: the API runs `calibration_prompts`
through the base model for the keys of `uncalibrated()` adapters and hands the features to `calibrate`.
"""

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from router.decision import RouteDecision

if TYPE_CHECKING:
    import torch

Key = tuple[int, str]  # (layer, module name)
Features = Mapping[Key, "torch.Tensor"]  # (layer, module) -> the base model's input to that projection (T, in)
Needs = Literal["text", "tokens", "features"]


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    name: str
    example_ids: tuple[tuple[int, ...], ...] = ()  # tokenized routing texts (loraplex.json examples, description)
    prototypes: Mapping[Key, "torch.Tensor"] = field(default_factory=dict)  # (in,) unit; for "features" routers
    # False: the engine serves it only alone, never in a mixture or routed per token (DoRA: a rescale of summed
    # deltas has no PEFT meaning; LLMEngine.check_request refuses it with 400)
    mixable: bool = True


@dataclass(frozen=True, slots=True)
class RouteQuery:
    text: str  # the routed text (a completion's first prompt, a chat's last user message)
    ids: tuple[int, ...] = ()  # its tokens, cut to the router's max_prompt_tokens
    features: Features = field(default_factory=dict)  # only for "features" routers; {} when no pass could run


class TaskRouter(ABC):
    name: str  # the model name it is served under
    needs: ClassVar[Needs]
    max_prompt_tokens: int | None = None  # tokens the router reads (None: all)
    calibration_prompts: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def adapter_added(self, adapter: AdapterInfo) -> None: ...

    @abstractmethod
    def adapter_removed(self, name: str) -> None: ...

    @abstractmethod
    def choose(self, query: RouteQuery) -> RouteDecision: ...

    def feature_keys(self, adapters: list[str] | None = None) -> set[Key]:
        """The projection inputs `choose` reads for these adapters (None: all), for "features" routers."""
        return set()

    def uncalibrated(self) -> list[str]:
        """Adapters added but not yet calibrated: not routed to until `calibrate` has seen them."""
        return []

    def calibrate(self, neutral: list[Features]) -> None:
        """neutral: features of `calibration_prompts`, covering the keys of `uncalibrated()`."""
        return None
