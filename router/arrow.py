"""Arrow routing (Ostapenko et al., "Towards Modular LLMs by Building and Reusing a Library of LoRAs").

Zero-shot, from the adapters' own weights: each adapter's prototype at a (layer, module) is the top
right singular vector v of its delta B @ A (router/prototypes.py), the input direction the adapter
changes most. A prompt whose projection inputs x line up with v is one the adapter was trained on.
An adapter's raw score is |cos(x, v)| (no sign: singular vectors have none) averaged over the prompt's
tokens and the (layer, module) pairs it targets.

Centred ranking (centre=generic, the default): which adapter is decided on x minus its mean over the
generic prompts' tokens at that projection. Every input shares that direction and every prototype partly
aligns with it, so it adds to all scores alike and carries no task signal (PEFT's GenKnowSub removes a
general-knowledge direction too, on the weight side, from a general-knowledge LoRA that does not exist
here). Chosen on the demo set by routing margin against three other variants (bench/arrow_variants.py:
median right-over-best-wrong score 1.65 against 1.29 uncentred); `centre=off` is the paper's raw cosine.
Whether any adapter applies (the fallback below) stays a test on the uncentred score: centred on the
mean of the 8 generic prompts, their own spread understates that of new text (on the demo set 5 of 16
off-task prompts then pass the bar, against none uncentred).

Raw scores are not comparable across adapters: how well generic text lines up with v differs by
adapter, module and rank (on the demo adapters raw scores route 50% of held-out prompts right; Arrow's
per-token softmax over the adapters sharing a module does no better when adapters target different
modules). So each adapter's score is its raw score over its raw score on a fixed set of generic,
task-free prompts (NEUTRAL_PROMPTS), measured once when it registers: "how much more than on any
text". That stays zero-shot (no task data) and routes 200/200 held-out demo prompts. The top-k
scores become mixture weights through a softmax at `temperature`. An adapter the engine serves only alone
(DoRA) never enters a mixture: when it is the top one it is served alone, as top_k=1 would (it is the
evidence; dropping it would hand its own prompts to other tasks' adapters); below the top it is skipped
and the next mixable adapter takes its place.

Fallback to the base (fallback=generic, the default): calibration also keeps the spread of each
adapter's scores over the generic prompts, and the top adapter must sit z standard deviations above
its own generic mean, z the one-sided normal quantile at level alpha = 0.05 over n competing adapters
(2.24 for 4, 2.39 for 6). Nothing in it is fitted to an adapter set: a fixed score threshold (1.25,
fallback=threshold, the rule before) was fitted to the demo adapters and sent right answers from other
adapters to the base.
"""

import statistics
from dataclasses import dataclass

import torch

from router.contract import AdapterInfo, Features, Key, RouteQuery, TaskRouter
from router.decision import RouteDecision

NEUTRAL_PROMPTS = (  # generic requests of no one task: the reference each adapter's score is measured against
    "The weather today is mild with a light breeze from the west.",
    "Please write a short story about a dragon who learns to cook.",
    "What is the capital of Australia, and why was it chosen?",
    "Summarize the main ideas of the French Revolution in a few sentences.",
    "def add(a, b):\n    return a + b",
    "Translate into German: I would like a cup of coffee.",
    "List three tips for staying productive while working from home.",
    "Explain how photosynthesis works to a ten year old.",
)


FALLBACKS = ("generic", "threshold", "off")
TOKEN_DEFAULTS = {"top_k": 2, "temperature": 0.25}  # mode=token's own, where the spec names none


@dataclass(frozen=True, slots=True)
class ArrowOptions:
    top_k: int = 1
    temperature: float = 0.1  # of the softmax over the top-k scores that gives mixture weights
    # when the base serves instead: "generic" (the top adapter's raw score is not `alpha`-significantly
    # above its own scores on generic text; see confident()), "threshold" (its score is under `threshold`), "off"
    fallback: str = "generic"
    alpha: float = 0.05  # for fallback=generic: the chance that an off-task prompt is routed anyway
    threshold: float = 1.25  # for fallback=threshold: on the top score (raw over generic-text raw)
    max_tokens: int = 256  # the prompt's first tokens are scored, so a long prompt costs a bounded pass
    # "request": one choice per request from a routing pass; "token": every token at every projection mixes
    # top_k of `candidates` adapters, chosen without a pass (router/arrow_token.py)
    mode: str = "request"
    candidates: int = 8
    centre: str = "generic"  # "generic": inputs minus their mean on the generic prompts (see above); "off"
    rank: str = "pass"  # mode=token with more adapters than candidates: rank them by a routing "pass" or "proxy"
    # mode=token, at a projection only some candidates target: "base" (calibrated scores, the base model competes;
    # kernels/arrow_rows.py) or "peft" (raw |x . v| among those present: a lone candidate gets weight 1)
    mixed: str = "base"

    @classmethod
    def parse(cls, spec: str) -> "ArrowOptions":
        """'top_k=2,temperature=0.1,threshold=0.3' (any subset) -> options; ValueError names a bad key."""
        kw: dict = {}
        defaults = cls()
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in cls.__dataclass_fields__:
                raise ValueError(f"arrow option {item!r}: expected KEY=VALUE with KEY in "
                                 f"{', '.join(cls.__dataclass_fields__)}")
            kw[key] = type(getattr(defaults, key))(value)  # each option's type is its default's
        if kw.get("mode") == "token":  # per token, the defaults chosen on the demo set (bench/arrow_token_accuracy.py)
            kw = {**TOKEN_DEFAULTS, **kw}
        opts = cls(**kw)
        if (opts.top_k < 1 or opts.temperature <= 0 or opts.max_tokens < 1 or opts.fallback not in FALLBACKS
                or not 0 < opts.alpha < 1):
            raise ValueError(f"arrow options out of range: {opts}")
        # candidates <= 8: a request's adapters are at most the engine's MAX_MIXTURE
        if (opts.mode not in ("request", "token") or not 1 <= opts.candidates <= 8 or opts.rank not in ("pass", "proxy")
                or opts.mixed not in ("base", "peft") or opts.centre not in ("generic", "off")):
            raise ValueError(f"arrow options: mode is request or token, candidates 1..8, rank pass or proxy, "
                             f"mixed base or peft, centre generic or off (got {opts})")
        return opts


class ArrowRouter(TaskRouter):
    needs = "features"
    calibration_prompts = NEUTRAL_PROMPTS

    def __init__(self, name: str, options: ArrowOptions = ArrowOptions(), default: str | None = None):
        self.name = name
        self.options = options
        self.default = default
        self._protos: dict[str, dict[Key, torch.Tensor]] = {}  # adapter -> key -> v (in,) unit
        self._baseline: dict[str, float] = {}  # adapter -> mean raw score on NEUTRAL_PROMPTS; routed once set
        self._spread: dict[str, float] = {}  # adapter -> std of its scores on NEUTRAL_PROMPTS (1 = their mean)
        self._solo: set[str] = set()  # adapters served only alone (AdapterInfo.mixable False: DoRA)
        self._centre: dict[Key, torch.Tensor] = {}  # key -> (in,) mean input on the generic prompts (centre=generic)
        self._rank_base: dict[str, float] = {}  # adapter -> mean centred raw score on NEUTRAL_PROMPTS

    def add(self, adapter: str, prototypes: dict[Key, torch.Tensor]) -> None:
        """Routable once calibrate() has seen it."""
        self.remove(adapter)
        if prototypes:
            self._protos[adapter] = {k: v.float() for k, v in prototypes.items()}

    def remove(self, adapter: str) -> None:
        self._protos.pop(adapter, None)
        self._baseline.pop(adapter, None)
        self._spread.pop(adapter, None)
        self._rank_base.pop(adapter, None)
        self._solo.discard(adapter)

    @property
    def max_prompt_tokens(self) -> int:
        return self.options.max_tokens

    def adapter_added(self, adapter: AdapterInfo) -> None:
        self.add(adapter.name, dict(adapter.prototypes))
        if not adapter.mixable:
            self._solo.add(adapter.name)

    def adapter_removed(self, name: str) -> None:
        self.remove(name)

    def choose(self, query: RouteQuery) -> RouteDecision:
        return self.route(query.features)

    def uncalibrated(self) -> list[str]:
        return [a for a in self._protos if a not in self._baseline]

    def feature_keys(self, adapters: list[str] | None = None) -> set[Key]:
        """The (layer, module) inputs the scores read: what the engine's routing pass must capture."""
        return {k for a in (self._protos if adapters is None else adapters) for k in self._protos[a]}

    def calibrate(self, neutral: list[Features]) -> None:
        """neutral: features of NEUTRAL_PROMPTS covering keys(uncalibrated())."""
        todo = self.uncalibrated()
        loo: list[dict[Key, torch.Tensor] | None] = [None] * len(neutral)
        if self.options.centre == "generic":
            # each generic prompt is scored against the mean of the others: centred on its own tokens it would
            # score lower than any new text, and every new prompt would look significant
            loo = [{} for _ in neutral]
            for k in {k for a in todo for k in self._protos.get(a, {})}:
                if not all(k in f for f in neutral):
                    continue
                sums = [f[k].float().sum(0) for f in neutral]  # (in,) each
                counts = [f[k].shape[0] for f in neutral]
                total, n = torch.stack(sums).sum(0), sum(counts)
                self._centre[k] = total / n  # (in,)
                for i, (s, c) in enumerate(zip(sums, counts, strict=True)):
                    loo[i][k] = (total - s) / max(n - c, 1)
        raws = [self._raw(f, todo, {}) for f in neutral]
        ranks = [self._raw(f, todo, c) for f, c in zip(neutral, loo, strict=True)] if self._centre else raws
        for a in todo:
            if vals := [r[a] for r in raws if a in r]:
                self._baseline[a] = max(sum(vals) / len(vals), 1e-12)  # evidence divides by it
                self._spread[a] = max(statistics.stdev(vals) / self._baseline[a] if len(vals) > 1 else 0.0, 1e-6)
            if vals := [r[a] for r in ranks if a in r]:
                self._rank_base[a] = max(sum(vals) / len(vals), 1e-12)  # scores divide by it

    def _raw(self, features: Features, adapters: list[str], centre: dict[Key, torch.Tensor] | None = None,
             ) -> dict[str, float]:
        """Mean |cos(x - centre, v)| over tokens and the adapter's (layer, module) pairs (centre: the generic
        mean, none where unknown); adapters whose inputs the features lack (added after the routing pass
        began) are left out."""
        centre = self._centre if centre is None else centre
        unit = {k: torch.nn.functional.normalize(x.float() - centre[k] if k in centre else x.float(), dim=-1)
                for k, x in features.items()}  # (T, in) each
        out = {}
        for a in adapters:
            protos = self._protos.get(a)
            if protos is None or not protos.keys() <= unit.keys():
                continue
            out[a] = float(torch.stack([(unit[k] @ v).abs().mean() for k, v in protos.items()]).mean())
        return out

    def scores(self, features: Features) -> dict[str, float]:
        """Each calibrated adapter's raw score over its raw score on generic text (1 = no more than any text),
        centred where the router centres (the ranking)."""
        raw = self._raw(features, list(self._baseline))
        return {a: r / self._rank_base.get(a, self._baseline[a]) for a, r in raw.items()}

    def evidence(self, features: Features) -> dict[str, float]:
        """The same, uncentred: what the fallback test reads (`confident`)."""
        raw = self._raw(features, list(self._baseline), {})
        return {a: r / self._baseline[a] for a, r in raw.items()}

    def z(self, adapter: str, score: float) -> float:
        """An evidence score in standard deviations of the adapter's own scores on generic text above their mean."""
        return (score - 1.0) / self._spread[adapter]

    def confident(self, adapter: str, score: float) -> bool:
        """Whether an evidence score (uncentred, `evidence`) is evidence for the adapter under the fallback rule.

        generic: one-sided test against the adapter's own generic-text scores at level alpha, Bonferroni
        over the n adapters competing (the top of n is taken): z >= the normal quantile 1 - alpha / n.
        Per adapter and in its own units, so an adapter set of another scale needs no new threshold."""
        if self.options.fallback == "generic":
            n = max(len(self._baseline), 1)
            return self.z(adapter, score) >= statistics.NormalDist().inv_cdf(1 - self.options.alpha / n)
        if self.options.fallback == "threshold":
            return score >= self.options.threshold
        return True

    def route(self, features: Features) -> RouteDecision:
        scores = self.scores(features) if features else {}
        evidence = self.evidence(features) if features else {}
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        shown = {a: round(s, 4) for a, s in ranked[:5]}
        if not ranked or not self.confident(ranked[0][0], evidence[ranked[0][0]]):
            return RouteDecision(self.name, ((self.default, 1.0),) if self.default else (), shown, fell_back=True)
        if self.options.top_k > 1 and ranked[0][0] in self._solo:
            return RouteDecision(self.name, ((ranked[0][0], 1.0),), shown)
        # mixing: adapters that only serve alone are left out, the next mixable ones take their places
        mixable = [(a, s) for a, s in ranked if self.options.top_k == 1 or a not in self._solo]
        top = [(a, s) for a, s in mixable[: self.options.top_k] if self.confident(a, evidence[a])]
        weights = (torch.tensor([s for _, s in top]) / self.options.temperature).softmax(0).tolist()
        return RouteDecision(self.name, tuple((a, w) for (a, _), w in zip(top, weights, strict=True)), shown)
