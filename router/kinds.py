"""`--router NAME=KIND`: the kinds of task router and how a spec builds one."""

from collections.abc import Callable
from typing import TYPE_CHECKING

from router.arrow import ArrowOptions, ArrowRouter
from router.contract import TaskRouter
from router.embedding import EmbeddingRouter
from router.rules import RulesRouter

if TYPE_CHECKING:
    import torch

KINDS = ("embedding", "rules:PATH", "arrow[:top_k=K,temperature=T,fallback=generic|threshold|off,alpha=A,threshold=S]")


def build_router(name: str, kind: str, token_embeddings: Callable[[], "torch.Tensor"]) -> TaskRouter:
    """ValueError names the bad spec. token_embeddings: the base model's (V, D) input embeddings, read if needed."""
    if kind == "embedding":
        return EmbeddingRouter(name, token_embeddings())
    if kind.startswith("rules:"):
        return RulesRouter.from_file(name, kind.removeprefix("rules:"))
    if kind == "arrow" or kind.startswith("arrow:"):
        return ArrowRouter(name, ArrowOptions.parse(kind.removeprefix("arrow").removeprefix(":")))
    raise ValueError(f"--router {name}={kind}: unknown kind (available: {', '.join(KINDS)})")
