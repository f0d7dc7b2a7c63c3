"""The task router: which adapter(s) serve a request that names none.

Every kind keeps one contract (router/contract.py: TaskRouter, fed AdapterInfo and RouteQuery, returning
a RouteDecision) and is built from its `--router` spec by router/kinds.py. Kinds: `embedding` (nearest
examples/description, on the base model's token embeddings), `arrow` (zero-shot from the adapters' own
weights, on the base model's hidden states for the prompt; top-k gives mixtures) and `rules` (ordered
regexes). server/api/routing.py serves them as model names.
"""

from router.arrow import ArrowOptions, ArrowRouter
from router.contract import AdapterInfo, RouteQuery, TaskRouter
from router.decision import RouteDecision
from router.embedding import EmbeddingOptions, EmbeddingRouter
from router.kinds import build_router
from router.prototypes import adapter_prototypes, top_right_singular_vector
from router.rules import RulesRouter

__all__ = [
    "AdapterInfo", "ArrowOptions", "ArrowRouter", "EmbeddingOptions", "EmbeddingRouter", "RouteDecision", "RouteQuery",
    "RulesRouter", "TaskRouter", "adapter_prototypes", "build_router", "top_right_singular_vector",
]
