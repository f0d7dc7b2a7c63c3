"""The significance bar of the generic-text fallback rule, from the standard library only (no scipy)."""

import math


def _t_cdf(x: float, dof: int) -> float:
    """P(T <= x) for Student's t, x >= 0: Simpson's rule on the density over [0, x] (smooth, 2000 panels)."""
    c = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(dof * math.pi)
    n, h = 2000, x / 2000
    f = [c * (1 + (i * h) ** 2 / dof) ** (-(dof + 1) / 2) for i in range(n + 1)]
    return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with `dof` degrees of freedom, 0.5 <= p < 1 (bisection, ~1e-9)."""
    assert 0.5 <= p < 1 and dof >= 1, (p, dof)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, dof) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, dof) < p else (lo, mid)
    return (lo + hi) / 2


def prediction_bar(alpha: float, competing: int, samples: int) -> float:
    """How many sample standard deviations above the sample mean of `samples` generic-text scores a new score
    must sit to be significant at level alpha / competing (Bonferroni: the best of `competing` is tested).

    The one-sided Student-t prediction bound t_{samples-1}(1 - alpha / competing) * sqrt(1 + 1 / samples): the
    exact bar for a fresh draw from the same normal when mean and spread are estimated from the samples. With
    8 samples the normal quantile Arrow uses (2.24 for 4 adapters) is 3.01 here: the spread of 8 scores is
    itself uncertain."""
    assert samples >= 2 and competing >= 1 and 0 < alpha < 1, (alpha, competing, samples)
    return t_quantile(1 - alpha / competing, samples - 1) * math.sqrt(1 + 1 / samples)
