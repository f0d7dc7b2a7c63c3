"""Arrow per token (`--router NAME=arrow:mode=token,top_k=K,temperature=T,candidates=M`): the request-level part.

The forward routes every token at every projection (kernels/arrow_rows.py); here a request only gets
its candidate set, the M adapters it may route among, which are then paged in and pinned for it like
a mixture's adapters. Scoring all registered adapters per token is not affordable with thousands of
them, and a routing prefill would cost as much as the request's own; so candidates are ranked by the
request-level Arrow score (router/arrow.py: mean |cos(x, v)| over tokens and targeted projections,
over the same on generic text).

No pass at all while every routable adapter fits in the candidate set (N <= M, the default M = 8).
Beyond that, `rank=pass` (default) scores on a routing pass over the prompt, as request-level Arrow;
`rank=proxy` needs no pass: each projection's input is taken as the token embedding through that
layer's RMSNorm (q/k/v: input_layernorm, gate/up: post_attention_layernorm), the residual stream
before any layer wrote to it (o_proj and down_proj have no proxy; adapters targeting only those come
last). Recall (is the adapter a task needs among the M) is measured by bench/arrow_candidates.py:
pass has the right adapter first for 200/200 demo and 180/180 validation prompts (centred ranking; 170
before it), proxy in the top 2 for 105/200 and 116/180 (bench/results/router/arrow_candidates.json), so
proxy is not the default.

Mixed target sets (`mixed=base`, the default): where only some of a request's candidates target a
projection, PEFT's rule (which never meets one) would give a lone candidate weight 1 on every token. Each
candidate's level, its mean |cos| against generic text over its targeted projections (request-level
Arrow's calibration, from the same generic prompts, once per adapter), goes with the decision; the
forward scores |cos| / level there and lets the base model compete at 1 (kernels/arrow_rows.py). Chosen
on the demo set (bench/arrow_token_accuracy.py); `mixed=peft` keeps PEFT's rule everywhere.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from router.arrow import NEUTRAL_PROMPTS, ArrowOptions, ArrowRouter
from router.contract import Features, Key, RouteQuery
from router.decision import RouteDecision

PROXY_MODULES = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


@dataclass(frozen=True, slots=True)
class ProxyInputs:
    """What the proxy features need from the base model: read once, no forward pass per request."""

    embeddings: torch.Tensor  # (V, D) input token embeddings
    gains: dict[Key, torch.Tensor]  # (layer, module in PROXY_MODULES) -> (D,) gain of the RMSNorm before it
    eps: float
    tokenize: Callable[[str], list[int]]

    def features(self, ids: Sequence[int], keys: set[Key]) -> Features:
        e = self.embeddings[torch.tensor(list(ids), dtype=torch.long)].float()  # (T, D)
        n = e * torch.rsqrt(e.pow(2).mean(-1, keepdim=True) + self.eps)  # (T, D)
        return {k: n * self.gains[k].float() for k in keys if k in self.gains}


class TokenArrowRouter(ArrowRouter):
    """needs: "tokens" with rank=proxy; "features" with rank=pass, and then only when there are more routable
    adapters than candidates (otherwise every adapter is a candidate and no pass runs)."""

    def __init__(self, name: str, options: ArrowOptions, proxy: ProxyInputs, default: str | None = None):
        super().__init__(name, options, default)
        self.proxy = proxy
        self.needs = "tokens" if options.rank == "proxy" else "features"
        self._neutral_ids = [proxy.tokenize(t)[: options.max_tokens] for t in NEUTRAL_PROMPTS]
        self._unscored: list[str] = []  # proxy ranking: adapters with no proxy-able projection
        self._full: dict[str, dict[Key, torch.Tensor]] = {}  # every prototype of each adapter, for its level
        self._levels: dict[str, float] = {}  # adapter -> mean |cos| of generic text against its prototypes

    @property
    def _by_proxy(self) -> bool:
        return self.options.rank == "proxy"

    def add(self, adapter: str, prototypes: dict[Key, torch.Tensor]) -> None:
        """With rank=proxy, calibrated at once on the proxy inputs of the generic prompts (no engine pass)."""
        if not self._by_proxy:
            super().add(adapter, prototypes)
            if prototypes:
                self._full[adapter] = {k: v.float() for k, v in prototypes.items()}
            return
        self.remove(adapter)
        scored = {k: v for k, v in prototypes.items() if k in self.proxy.gains}
        if not prototypes:
            return
        self._full[adapter] = {k: v.float() for k, v in prototypes.items()}
        if not scored:
            self._unscored.append(adapter)
            return
        super().add(adapter, scored)
        self._full[adapter] = {k: v.float() for k, v in prototypes.items()}  # super().add removed it
        raws = [self._raw(self.proxy.features(ids, set(scored)), [adapter]) for ids in self._neutral_ids]
        vals = [r[adapter] for r in raws if adapter in r]
        self._baseline[adapter] = max(sum(vals) / max(len(vals), 1), 1e-12)

    def remove(self, adapter: str) -> None:
        super().remove(adapter)
        self._full.pop(adapter, None)
        self._levels.pop(adapter, None)
        if adapter in self._unscored:
            self._unscored.remove(adapter)

    def routable(self) -> list[str]:
        """Adapters served only alone (DoRA) are never candidates: every token mixes its candidates."""
        return [a for a in (*self._protos, *self._unscored) if a not in self._solo]

    def uncalibrated(self) -> list[str]:
        todo = [] if self._by_proxy else super().uncalibrated()
        if self.options.mixed == "base":
            todo += [a for a in self._full if a not in self._levels and a not in todo]
        return todo

    def feature_keys(self, adapters: list[str] | None = None) -> set[Key]:
        """For calibration (adapters given): all their projections. For a request (None): no pass when every
        adapter is a candidate anyway."""
        if adapters is not None:
            return {k for a in adapters for k in self._full.get(a, {})}
        if self._by_proxy or len(self.routable()) <= self.options.candidates:
            return set()
        return super().feature_keys()

    def calibrate(self, neutral: list[Features]) -> None:
        """Request-level calibration (rank=pass), and each new adapter's level (mixed=base)."""
        todo = [a for a in self.uncalibrated() if a not in self._levels]
        if not self._by_proxy:
            super().calibrate(neutral)
        if self.options.mixed != "base":
            return
        for a in todo:
            protos = self._full.get(a, {})
            vals = [self._mean_abs_cos(f, protos) for f in neutral if protos and protos.keys() <= f.keys()]
            if vals:
                self._levels[a] = max(sum(vals) / len(vals), 1e-12)

    @staticmethod
    def _mean_abs_cos(features: Features, protos: dict[Key, torch.Tensor]) -> float:
        """Mean |cos(x, v)| over tokens and the (layer, module) pairs of protos (router/arrow.py's raw score)."""
        unit = {k: torch.nn.functional.normalize(features[k].float(), dim=-1) for k in protos}  # (T, in) each
        return float(torch.stack([(unit[k] @ v).abs().mean() for k, v in protos.items()]).mean())

    def ranked(self, ids: Sequence[int], features: Features | None = None) -> list[tuple[str, float]]:
        """Every routable adapter, best first (unscored ones last, in registration order)."""
        if self._by_proxy:
            features = self.proxy.features(ids, super().feature_keys()) if ids and self._protos else {}
        scores = self.scores(features) if features else {}
        ranked = sorted(((a, s) for a, s in scores.items() if a not in self._solo), key=lambda kv: -kv[1])
        return ranked + [(a, 0.0) for a in self.routable() if a not in scores]

    def choose(self, query: RouteQuery) -> RouteDecision:
        ranked = self.ranked(query.ids, query.features)
        shown = {a: round(s, 4) for a, s in ranked[:5]}
        candidates = tuple((a, 1.0) for a, _ in ranked[: self.options.candidates])
        if not candidates:
            return RouteDecision(self.name, ((self.default, 1.0),) if self.default else (), shown, fell_back=True)
        routing: tuple = (self.options.top_k, self.options.temperature)
        if self.options.mixed == "base" and all(a in self._levels for a, _ in candidates):
            routing += (tuple(self._levels[a] for a, _ in candidates),)
        return RouteDecision(self.name, candidates, shown, routing=routing)
