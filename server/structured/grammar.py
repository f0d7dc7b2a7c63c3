"""A compiled grammar (shared, immutable) and each sequence's matcher state over it."""

import logging

import torch
import xgrammar as xgr

from server.structured.spec import GrammarSpec

log = logging.getLogger(__name__)


class Grammar:
    """One compiled grammar; sequences that use it each get their own GrammarState."""

    __slots__ = ("spec", "compiled")

    def __init__(self, spec: GrammarSpec, compiled: xgr.CompiledGrammar):
        self.spec = spec
        self.compiled = compiled

    def matcher(self) -> "GrammarState":
        return GrammarState(xgr.GrammarMatcher(self.compiled), self.compiled.tokenizer_info.vocab_size)


class GrammarState:
    """Where one sequence is in its grammar. Advanced once per appended token, on the engine thread;
    read by the mask worker only between the engine's advance and the next sampling (never both at once)."""

    __slots__ = ("_m", "vocab_size")

    def __init__(self, matcher: xgr.GrammarMatcher, vocab_size: int):
        self._m = matcher
        self.vocab_size = vocab_size  # the width of its masks

    def advance(self, token_id: int) -> str | None:
        """Accept a sampled token; "stop" once the grammar is complete and its stop token was taken."""
        if not self._m.accept_token(token_id):
            # only reachable when the row's mask was not applied (a bug): end the sequence rather than go astray
            log.error("grammar rejected token %d", token_id)
            return "stop"
        return "stop" if self._m.is_terminated() else None

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into row `row` of bitmask (R, ceil(V / 32)) int32."""
        self._m.fill_next_token_bitmask(bitmask, row)
