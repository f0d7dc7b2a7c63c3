"""The task router: which adapter(s) serve a request that names none.

Here now: Arrow prototypes (top right singular vector of each LoRA delta, computed without forming
B @ A) and the deterministic rules router. The arrow and embedding routers' scoring on the base
model's hidden states and the engine/API wiring are the next steps of the router issue.
"""

from router.decision import RouteDecision
from router.prototypes import adapter_prototypes, top_right_singular_vector
from router.rules import RulesRouter

__all__ = ["RouteDecision", "RulesRouter", "adapter_prototypes", "top_right_singular_vector"]
