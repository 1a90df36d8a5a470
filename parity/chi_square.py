"""Chi-square goodness of fit for the sampling tests: the statistic over groups of bins, and its bound.

Under the null X2 = sum (O - E)^2 / E over a group's bins (bins with E < 5 merged, as Cochran's rule
asks) is chi-square with bins - 1 degrees of freedom per group. critical_value is its 1 - alpha
quantile by the Wilson-Hilferty cube-root approximation (no scipy in the lock):
  chi2_{1-alpha}(df) ~ df * (1 - 2/(9 df) + z * sqrt(2/(9 df)))^3,  z = Phi^-1(1 - alpha)
checked against the exact tail (chi2_sf, the regularized gamma) in
decoding/tests/test_speculative_distribution.py: within 4% for df >= 3 (high side), 1% for df >= 30.
Used by decoding/tests/test_speculative_distribution.py and scheduler/tests/test_speculative_engine.py.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

ALPHA = 1e-4


def critical_value(df: int, alpha: float = ALPHA) -> float:
    """Wilson-Hilferty approximation of the chi-square (1 - alpha) quantile with df degrees of freedom."""
    z = NormalDist().inv_cdf(1 - alpha)
    c = 2.0 / (9.0 * df)
    return df * (1 - c + z * math.sqrt(c)) ** 3


def chi2_sf(df: int, x: float) -> float:
    """Exact upper tail of chi-square(df) at x: 1 - P(df/2, x/2), the regularized gamma by its series."""
    a, z = df / 2, x / 2
    term = total = 1.0 / a
    n = 1
    while term > 1e-17 * total:
        term *= z / (a + n)
        total += term
        n += 1
    return 1.0 - total * math.exp(-z + a * math.log(z) - math.lgamma(a))


def chi_square(groups: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int]:
    """(X2, df) over groups of (observed counts (V,), probabilities (V,)); bins with expected < 5 merge."""
    stat, df = 0.0, 0
    for counts, probs in groups:
        n = float(counts.sum())
        if n < 50:  # too few draws to say anything about this group
            continue
        exp = probs.double() * n
        obs = counts.double()
        small = exp < 5
        bins_o, bins_e = list(obs[~small]), list(exp[~small])
        if small.any():
            if float(exp[small].sum()) >= 5 or not bins_e:
                bins_o.append(obs[small].sum())
                bins_e.append(exp[small].sum())
            else:  # merge the leftovers into the smallest regular bin
                i = min(range(len(bins_e)), key=lambda j: float(bins_e[j]))
                bins_o[i], bins_e[i] = bins_o[i] + obs[small].sum(), bins_e[i] + exp[small].sum()
        if len(bins_e) < 2:
            continue
        o, e = torch.stack(bins_o), torch.stack(bins_e)
        if bool(((e == 0) & (o > 0)).any()):
            return float("inf"), max(df, 1)  # a token the target never emits was emitted
        stat += float(((o - e) ** 2 / e).sum())
        df += len(bins_e) - 1
    return stat, df
