"""The noise-aware verdict of `ssl-bench regress`: is a change bigger than the test set's own noise?

A drop fails when it is significant at one-sided 95% (ALPHA = 0.05):

- where the baseline entry keeps bootstrap statistics and the result keeps
  per-image results (or statistics) over the same test images: a paired
  bootstrap on the shared resamples (benchmark.bootstrap): the drop fails when
  (1 + #{result* >= baseline*}) / (n_boot + 1) <= ALPHA;
- otherwise, for a percentage on a known number of test images n: a one-sided
  two-proportion z-test, a drop beyond Z x 100 sqrt(2 p (1 - p) / n) points,
  p the mean of the two values / 100 (exact for accuracies of independent
  runs, an approximation for AP);
- otherwise (no size, or not a percentage: errors in degrees), the absolute
  DEFAULT_TOLERANCE.

An improvement is judged the same way in the other direction.
"""

from __future__ import annotations

import base64
import dataclasses
import math
from typing import Any

import numpy as np
from scipy.special import ndtri

from benchmark.bootstrap import (N_BOOT, SCHEME, SEED, Bootstrap, Pairing, Resampled, aligned, evidence_for,
                                 stored_statistics)
from benchmark.errors import SslBenchError
from benchmark.results import RecordArrays

ALPHA = 0.05
Z = float(ndtri(1.0 - ALPHA))  # 1.645
LEVEL = "one-sided 95%"
DEFAULT_TOLERANCE = 0.5  # metric points, where neither per-image results nor the test-set size say more


@dataclasses.dataclass(frozen=True)
class Verdict:
    """ok, improved or dropped, the allowed drop in points (None for a paired test) and why."""

    status: str
    allowance: float | None
    note: str


def record_statistics(path: str | None, record: dict[str, Any], tap: str, metric: str,
                      bootstrap: Bootstrap) -> Resampled | None:
    """The record's bootstrap statistics of (tap, metric) on bootstrap's resamples: stored, or from per-image results.

    None when the record keeps neither, or its side file cannot be read.
    """
    arrays = RecordArrays(path, record) if path else np.asarray
    try:
        stored = stored_statistics(record, tap, metric, bootstrap.n_boot, bootstrap.seed, arrays)
        if stored is not None:
            return stored
        found = evidence_for(record, tap, metric, arrays)
    except (SslBenchError, ValueError, KeyError, TypeError):
        return None
    return None if found is None else bootstrap.resampled(found)


def images_measured(record: dict[str, Any], stats: Resampled | None) -> int | None:
    """How many test images a metric of the record is measured on: from its per-image results, else its test split."""
    if stats is not None:
        return stats.pairing.n_images
    dataset = record.get("dataset") or {}
    splits = dataset.get("splits") if isinstance(dataset.get("splits"), dict) else {}
    named = ((record.get("details") or {}).get("splits") or {}).get("test")
    count = splits.get(named if isinstance(named, str) else "test")
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else None


def statistics_to_json(stats: Resampled) -> dict[str, Any]:
    """A baseline entry's "bootstrap" object: the resampling and the statistics as base64 float64 (exact)."""
    return {"n_boot": stats.n_boot, "seed": stats.seed, "scheme": stats.scheme, "pairing": stats.pairing.to_json(),
            "stats_float64_base64": base64.b64encode(np.asarray(stats.stats, dtype="<f8").tobytes()).decode()}


def statistics_from_json(data: Any, value: float, dataset_digest: str | None) -> Resampled:
    """The Resampled of a baseline entry's "bootstrap" object; ValueError when it is not one."""
    if not isinstance(data, dict):
        raise ValueError("'bootstrap' is not an object")
    try:
        stats = np.frombuffer(base64.b64decode(data["stats_float64_base64"], validate=True), dtype="<f8")
        n_boot, seed, scheme = data["n_boot"], data["seed"], data["scheme"]
        pairing = Pairing.from_json(data["pairing"], dataset_digest)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"'bootstrap' lacks or mistypes {exc}") from None
    if not isinstance(n_boot, int) or not isinstance(seed, int) or not isinstance(scheme, str) or len(stats) != n_boot:
        raise ValueError(f"'bootstrap' has {len(stats)} statistics for n_boot {n_boot!r}")
    return Resampled(pairing, value, stats.astype(np.float64), n_boot, seed, scheme)


def paired_verdict(base: Resampled, result: Resampled, higher_is_better: bool) -> Verdict:
    """The paired bootstrap verdict of result against base (same resamples, same test images)."""
    boot = Bootstrap(base.n_boot, base.seed)
    best, other = (base, result) if higher_is_better else (result, base)
    p_drop = boot.pvalue(best, other)
    p_gain = boot.pvalue(other, best)
    status = "dropped" if p_drop <= ALPHA else "improved" if p_gain <= ALPHA else "ok"
    p = p_drop if status != "improved" else p_gain
    return Verdict(status, None, f"paired bootstrap over {base.pairing.n_images} test images, "
                                 f"p = {p:.3f} ({LEVEL}: fails at p <= {ALPHA:g})")


def can_pair(base: Resampled | None, result: Resampled | None) -> bool:
    """True when base and result are statistics of one resampling over the same test images."""
    return (base is not None and result is not None and base.scheme == SCHEME == result.scheme
            and (base.n_boot, base.seed) == (result.n_boot, result.seed) and aligned(base, result))


def scaled_allowance(base_value: float, value: float, n_images: int | None) -> float | None:
    """The drop a one-sided 95% two-proportion z-test allows between percentages on n images, or None."""
    if n_images is None or not (0.0 <= base_value <= 100.0 and 0.0 <= value <= 100.0):
        return None
    p = (base_value + value) / 200.0
    return Z * 100.0 * math.sqrt(2.0 * p * (1.0 - p) / n_images)


def default_bootstrap() -> Bootstrap:
    """The resampling a baseline stores statistics of: the runner's (n_boot, seed)."""
    return Bootstrap(N_BOOT, SEED)
