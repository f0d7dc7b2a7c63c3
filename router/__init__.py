"""The task router: which adapter(s) serve a request that names none.

Kinds: `embedding` (nearest examples/description, on the base model's token embeddings), `arrow`
(zero-shot from the adapters' own weights, on the base model's hidden states for the prompt; top-k
gives mixtures) and `rules` (ordered regexes). Each returns a RouteDecision; server/api/routing.py
serves them as model names.
"""

from router.arrow import ArrowOptions, ArrowRouter
from router.decision import RouteDecision
from router.embedding import EmbeddingRouter
from router.prototypes import adapter_prototypes, top_right_singular_vector
from router.rules import RulesRouter

__all__ = [
    "ArrowOptions", "ArrowRouter", "EmbeddingRouter", "RouteDecision", "RulesRouter", "adapter_prototypes",
    "top_right_singular_vector",
]
