"""Structured outputs: grammars compiled once per spec, a matcher per sequence, token masks per step."""

from server.structured.compiler import GrammarCompiler, GrammarError
from server.structured.grammar import Grammar, GrammarState
from server.structured.masks import PendingMasks, apply_masks, start_masks
from server.structured.spec import GrammarSpec

__all__ = [
    "Grammar", "GrammarCompiler", "GrammarError", "GrammarSpec", "GrammarState", "PendingMasks", "apply_masks",
    "start_masks",
]
