"""`--router NAME=KIND`: the kinds of task router and how a spec builds one."""

from collections.abc import Callable
from typing import TYPE_CHECKING

from router.arrow import NEUTRAL_PROMPTS, ArrowOptions, ArrowRouter
from router.arrow_token import ProxyInputs, TokenArrowRouter
from router.contract import TaskRouter
from router.embedding import EmbeddingOptions, EmbeddingRouter
from router.rules import RulesRouter

if TYPE_CHECKING:
    import torch

KINDS = ("embedding[:k=K,fallback=generic|threshold|off,alpha=A,threshold=S]", "rules:PATH",
         "arrow[:top_k=K,temperature=T,fallback=generic|threshold|off,alpha=A,threshold=S,mode=request|token,"
         "candidates=M,rank=pass|proxy,mixed=base|peft]")


def build_router(name: str, kind: str, token_embeddings: Callable[[], "torch.Tensor"],
                 proxy: Callable[[], ProxyInputs] | None = None,
                 tokenize: Callable[[str], list[int]] | None = None) -> TaskRouter:
    """ValueError names the bad spec. token_embeddings: the base model's (V, D) input embeddings, read if needed;
    proxy: what Arrow's per-token mode ranks its candidates with (router/arrow_token.py), read if needed;
    tokenize: the base model's tokenizer, for the embedding router's calibration prompts (fallback=generic)."""
    if kind == "embedding" or kind.startswith("embedding:"):
        options = EmbeddingOptions.parse(kind.removeprefix("embedding").removeprefix(":"))
        if options.fallback == "generic" and tokenize is None:
            raise ValueError(f"--router {name}={kind}: fallback=generic needs the tokenizer")
        generic = [tokenize(t) for t in NEUTRAL_PROMPTS] if options.fallback == "generic" else []
        return EmbeddingRouter(name, token_embeddings(), options, generic)
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
