"""Binomial intervals: the uncertainty of a rate (an error or an accuracy) counted on n independent images.

    low, high = ops.evaluate.binomial.binomial_band(0.12, 1500)              # Wilson score interval, 95%
    low, high = binomial_band(errors, counts, level=0.9)                      # arrays: one band per entry
    low, high = binomial_band(errors, counts, method="wald")                  # the normal approximation

Wilson's score interval (the default) stays inside [0, 1] and keeps its coverage for rates near 0 or 1 and for
small n; the Wald interval, rate +- z * sqrt(rate * (1 - rate) / n), is what robustness.ipynb drew before and
can leave [0, 1] there. Both use z, the two-sided `level` quantile of the standard normal distribution; Wilson's
is `scipy.stats.binomtest(k, n).proportion_ci(level, method="wilson")` with k = rate * n.
"""
from __future__ import annotations

from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

METHODS = ("wilson", "wald")


def binomial_band(rate: ArrayLike, n: ArrayLike, level: float = 0.95,
                  method: str = "wilson") -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the two-sided `level` interval of each rate (a fraction in [0, 1]) measured on `n` images
    (rate and n broadcast against each other; numpy arrays, 0-d for scalars). method: "wilson" | "wald"."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not (isinstance(level, float) and 0 < level < 1):
        raise ValueError(f"level must be a fraction between 0 and 1 (e.g. 0.95), got {level!r}")
    p, n = np.asarray(rate, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"rates must be fractions between 0 and 1, got {rate!r}")
    if not np.all(n > 0):
        raise ValueError(f"the number of images must be positive, got {n!r}")
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    if method == "wald":
        half = z * np.sqrt(p * (1 - p) / n)
        return p - half, p + half
    shrink = 1 + z * z / n
    center = (p + z * z / (2 * n)) / shrink
    half = z / shrink * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.clip(center - half, 0, 1), np.clip(center + half, 0, 1)
