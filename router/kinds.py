"""`--router NAME=KIND`: the kinds of task router and how a spec builds one."""

from collections.abc import Callable
from typing import TYPE_CHECKING

from router.arrow import ArrowOptions, ArrowRouter
from router.arrow_token import ProxyInputs, TokenArrowRouter
from router.contract import TaskRouter
from router.embedding import EmbeddingRouter
from router.rules import RulesRouter

if TYPE_CHECKING:
    import torch

KINDS = ("embedding", "rules:PATH",
         "arrow[:top_k=K,temperature=T,fallback=generic|threshold|off,alpha=A,threshold=S,mode=request|token,"
         "candidates=M,rank=pass|proxy]")


def build_router(name: str, kind: str, token_embeddings: Callable[[], "torch.Tensor"],
                 proxy: Callable[[], ProxyInputs] | None = None) -> TaskRouter:
    """ValueError names the bad spec. token_embeddings: the base model's (V, D) input embeddings, read if needed;
    proxy: what Arrow's per-token mode ranks its candidates with (router/arrow_token.py), read if needed."""
    if kind == "embedding":
        return EmbeddingRouter(name, token_embeddings())
    if kind.startswith("rules:"):
        return RulesRouter.from_file(name, kind.removeprefix("rules:"))
    if kind == "arrow" or kind.startswith("arrow:"):
        options = ArrowOptions.parse(kind.removeprefix("arrow").removeprefix(":"))
        if options.mode == "token":
            if proxy is None:
                raise ValueError(f"--router {name}={kind}: mode=token needs the base model's embeddings")
            return TokenArrowRouter(name, options, proxy())
        return ArrowRouter(name, options)
    raise ValueError(f"--router {name}={kind}: unknown kind (available: {', '.join(KINDS)})")
