"""Bias-corrected and accelerated (BCa) bootstrap intervals (Efron 1987; Efron & Tibshirani 1993, ch. 14).

The percentile interval reads the 2.5% and 97.5% points of the bootstrap
statistics. Where the bootstrap distribution is not centred on the point value
(mAP on small test sets: a resample repeats images, and repeats raise AP), it
sits off to one side. BCa reads other percentiles instead,

    alpha' = Phi(z0 + (z0 + z_alpha) / (1 - a (z0 + z_alpha))),

with the bias z0 = Phi^-1(share of statistics below the point value, ties
counted half) and the acceleration a from the jackknife (leave one image out)
values theta_(i): a = sum(d^3) / (6 sum(d^2)^1.5), d = mean(theta_(.)) - theta_(i).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri


def acceleration(jackknife: np.ndarray) -> float:
    """BCa's acceleration from the leave-one-out values (NaN ones left out); 0 when they do not vary."""
    values = np.asarray(jackknife, dtype=np.float64)
    values = values[~np.isnan(values)]
    d = values.mean() - values if len(values) else values
    spread = float(np.sum(d ** 2))
    return 0.0 if spread == 0.0 else float(np.sum(d ** 3) / (6.0 * spread ** 1.5))


def bca_interval(stats: np.ndarray, point: float, accel: float, level: float = 0.95) -> tuple[float, float]:
    """The BCa interval at `level` from the bootstrap statistics (NaN ones left out), the point value and a.

    z0 is computed on a share clipped to [1/(2B), 1 - 1/(2B)], so a point outside every resample gives
    the extreme statistic, not an infinite bound. (NaN, NaN) when no statistic is finite.
    """
    stats = np.asarray(stats, dtype=np.float64)
    stats = stats[~np.isnan(stats)]
    if not len(stats):
        return float("nan"), float("nan")
    below = (np.sum(stats < point) + 0.5 * np.sum(stats == point)) / len(stats)
    z0 = ndtri(np.clip(below, 0.5 / len(stats), 1.0 - 0.5 / len(stats)))
    z = ndtri(np.array([(1.0 - level) / 2.0, (1.0 + level) / 2.0]))
    shares = ndtr(z0 + (z0 + z) / (1.0 - accel * (z0 + z)))
    lo, hi = np.percentile(stats, 100.0 * shares)
    return float(lo), float(hi)
