"""Nearest-example routing on the base model's own token embeddings (semantic-router style).

An adapter may carry example prompts and a description (`loraplex.json` in its folder, checked at
registration and carried by its AdapterRef as `routing_texts`). Each is embedded once as the mean of
the base model's input embeddings over its tokens, centred on the mean of all examples (what every
prompt shares carries no signal) and normalised. A prompt goes to the adapter that gathers the most
similarity among its k nearest examples. On the demo tasks' held-out prompts this routes 200/200 with
no forward pass at all.

Fallback to the base (fallback=generic, the default): an adapter's own score for a prompt is the mean
of its m = min(k, its examples) best similarities to it. At calibration (whenever the set of adapters
changes, since the centring does: a few dot products, no forward pass) every adapter is scored on the
generic, task-free prompts Arrow calibrates on (router/arrow.py NEUTRAL_PROMPTS, 8), which gives its own
mean and spread on text of no task. The chosen adapter must score above its own generic mean by the
one-sided Student-t prediction bar at level alpha = 0.05 over the n adapters competing
(router/stats.py: 3.01 sample standard deviations for 4 adapters, 3.32 for 6). Per adapter and in its
own units, so an adapter set of another scale needs no new threshold. The normal quantile (Arrow's bar,
2.24 for 4) ignores that 8 scores estimate the spread loosely: on the demo set it served 5 of 16
off-task prompts with an adapter, the t bar 2 (bench/results/router/README.md). fallback=threshold
keeps the rule before: the chosen adapter's mean similarity over its votes must reach 0.45, a value
fitted on the demo adapters. fallback=off never falls back.

Spec: `embedding[:k=K,fallback=generic|threshold|off,alpha=A,threshold=S]`.
"""

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F

from router.contract import AdapterInfo, RouteQuery, TaskRouter
from router.decision import RouteDecision
from router.stats import prediction_bar

FALLBACKS = ("generic", "threshold", "off")


@dataclass(frozen=True, slots=True)
class EmbeddingOptions:
    k: int = 5  # nearest examples that vote
    fallback: str = "generic"
    alpha: float = 0.05  # for fallback=generic: the chance that an off-task prompt is routed anyway
    threshold: float = 0.45  # for fallback=threshold: on the chosen adapter's mean similarity over its votes

    @classmethod
    def parse(cls, spec: str) -> "EmbeddingOptions":
        """'k=5,fallback=threshold,threshold=0.45' (any subset) -> options; ValueError names a bad key."""
        kw: dict = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in cls.__dataclass_fields__:
                raise ValueError(f"embedding option {item!r}: expected KEY=VALUE with KEY in "
                                 f"{', '.join(cls.__dataclass_fields__)}")
            kw[key] = type(getattr(cls(), key))(value)  # each option's type is its default's
        opts = cls(**kw)
        if opts.k < 1 or opts.fallback not in FALLBACKS or not 0 < opts.alpha < 1:
            raise ValueError(f"embedding options out of range: {opts}")
        return opts


@dataclass(frozen=True, slots=True)
class _Index:
    mean: torch.Tensor  # (D,), of every example
    labels: list[str]  # per example
    vecs: torch.Tensor  # (N, D) unit, centred
    rows: dict[str, slice]  # adapter -> its examples' rows
    generic: dict[str, tuple[float, float]]  # adapter -> (mean, std) of its own score on the generic prompts
    bar: float  # fallback=generic: standard deviations above that mean


class EmbeddingRouter(TaskRouter):
    needs = "tokens"

    def __init__(self, name: str, embeddings: torch.Tensor, options: EmbeddingOptions = EmbeddingOptions(),
                 generic: Sequence[Sequence[int]] = (), default: str | None = None):
        """generic: the tokens of the calibration prompts (at least 2; only fallback=generic reads them)."""
        self.name = name
        self.table = embeddings.detach().float()  # (V, D), the base model's input embeddings
        self.options, self.default = options, default
        self._generic = [list(ids) for ids in generic if ids]
        if options.fallback == "generic" and len(self._generic) < 2:
            raise ValueError("embedding router: fallback=generic needs at least 2 tokenized generic prompts")
        self._raw: dict[str, torch.Tensor] = {}  # adapter -> (n_examples, D), uncentred
        self._index: _Index | None = None

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        return self.table[torch.tensor(list(ids), dtype=torch.long)].mean(0)  # (D,)

    def add(self, adapter: str, examples: list[list[int]]) -> None:
        """An example of no tokens has no mean: it would turn every score into NaN, so it is skipped."""
        examples = [ids for ids in examples if ids]
        if examples:
            self._raw[adapter] = torch.stack([self.embed(ids) for ids in examples])
            self._index = None

    def remove(self, adapter: str) -> None:
        if self._raw.pop(adapter, None) is not None:
            self._index = None

    def adapter_added(self, adapter: AdapterInfo) -> None:
        self.add(adapter.name, [list(ids) for ids in adapter.example_ids])

    def adapter_removed(self, name: str) -> None:
        self.remove(name)

    def choose(self, query: RouteQuery) -> RouteDecision:
        return self.route(list(query.ids))

    def _own_scores(self, index: _Index, sims: torch.Tensor) -> dict[str, float]:
        """sims (N,): similarity to every example -> each adapter's mean over its m best."""
        k = self.options.k
        return {a: float(sims[s].topk(min(k, s.stop - s.start)).values.mean()) for a, s in index.rows.items()}

    def _built(self) -> _Index:
        if self._index is None:
            raw = torch.cat(list(self._raw.values()))  # (N, D)
            mean = raw.mean(0)
            labels = [a for a, v in self._raw.items() for _ in range(v.shape[0])]
            ends = list(accumulate(v.shape[0] for v in self._raw.values()))
            rows = {a: slice(e - v.shape[0], e) for (a, v), e in zip(self._raw.items(), ends, strict=True)}
            index = _Index(mean, labels, F.normalize(raw - mean, dim=-1), rows, {}, 0.0)
            if self.options.fallback == "generic":
                per = [self._own_scores(index, index.vecs @ self._unit(index, ids)) for ids in self._generic]
                generic = {a: (statistics.mean(p[a] for p in per), max(statistics.stdev(p[a] for p in per), 1e-6))
                           for a in rows}
                index = _Index(mean, labels, index.vecs, rows, generic,
                               prediction_bar(self.options.alpha, len(rows), len(self._generic)))
            self._index = index
        return self._index

    def _unit(self, index: _Index, ids: Sequence[int]) -> torch.Tensor:
        return F.normalize(self.embed(ids) - index.mean, dim=0)  # (D,)

    def z(self, adapter: str, prompt_ids: Sequence[int]) -> float:
        """fallback=generic: the adapter's own score for the prompt, in standard deviations of its scores on
        the generic prompts above their mean."""
        index = self._built()
        own = self._own_scores(index, index.vecs @ self._unit(index, prompt_ids))[adapter]
        mu, sd = index.generic[adapter]
        return (own - mu) / sd

    def route(self, prompt_ids: list[int]) -> RouteDecision:
        if not self._raw or not prompt_ids:
            return self._fallback({})
        index = self._built()
        sims = index.vecs @ self._unit(index, prompt_ids)  # (N,)
        top = sims.topk(min(self.options.k, len(index.labels)))
        votes: dict[str, list[float]] = {}
        for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            votes.setdefault(index.labels[i], []).append(s)
        best = max(votes, key=lambda a: sum(votes[a]))
        scores = {a: round(sum(v) / len(v), 4) for a, v in sorted(votes.items(), key=lambda kv: -sum(kv[1]))}
        if self.options.fallback == "generic":
            mu, sd = index.generic[best]
            confident = (self._own_scores(index, sims)[best] - mu) / sd >= index.bar
        else:
            confident = self.options.fallback == "off" or scores[best] >= self.options.threshold
        if not confident:
            return self._fallback(scores)
        return RouteDecision(self.name, ((best, 1.0),), scores)

    def _fallback(self, scores: dict[str, float]) -> RouteDecision:
        return RouteDecision(self.name, ((self.default, 1.0),) if self.default else (), scores, fell_back=True)
