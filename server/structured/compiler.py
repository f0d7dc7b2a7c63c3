"""GrammarSpec -> Grammar, with xgrammar, for one tokenizer; a bounded LRU of compiled grammars keyed by spec."""

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable

import xgrammar as xgr
from transformers import PreTrainedTokenizerBase

from server.structured.grammar import Grammar
from server.structured.spec import GrammarSpec

_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # xgrammar prefixes its messages with "[time] file.cc:line: "


class GrammarError(ValueError):
    """The spec cannot be compiled; the message names the problem."""


class GrammarCompiler:
    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_ids: Iterable[int], cache_size: int = 128,
    ):
        # vocab_size is the model's logits width (may exceed the tokenizer's length)
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids))
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self._cache: OrderedDict[GrammarSpec, Grammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.compiles = 0  # cache misses, for tests and metrics

    def compile(self, spec: GrammarSpec) -> Grammar:
        with self._lock:
            hit = self._cache.get(spec)
            if hit is not None:
                self._cache.move_to_end(spec)
                return hit
        grammar = Grammar(spec, self._compile(spec))
        with self._lock:
            self.compiles += 1
            self._cache[spec] = grammar
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return grammar

    def _compile(self, spec: GrammarSpec) -> xgr.CompiledGrammar:
        c = self._compiler
        try:
            match spec.kind:
                case "json_schema":
                    # no free whitespace: a small model would otherwise spend its tokens on newlines
                    return c.compile_json_schema(spec.text, any_whitespace=False, strict_mode=True)
                case "json_object":
                    return c.compile_json_schema('{"type": "object"}', any_whitespace=False, strict_mode=False)
                case "regex":
                    return c.compile_regex(spec.text)
                case "grammar":
                    return c.compile_grammar(spec.text)
                case "choice":
                    options = (json.dumps(s, ensure_ascii=False) for s in json.loads(spec.text))
                    return c.compile_grammar("root ::= " + " | ".join(options))
        except Exception as e:  # the spec is client input: whatever xgrammar raises about it is a 400
            raise GrammarError(f"cannot compile this {spec.kind.replace('_', ' ')}: {_LOCATION.sub('', str(e)).strip()}"
                               ) from None
        raise GrammarError(f"unknown grammar kind {spec.kind!r}")
