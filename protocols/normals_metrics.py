"""Angular-error metrics of surface normals over all valid pixels of a test set, pooled, in bounded memory.

`NormalErrors.add(pred, gt, mask)` takes one image at a time: float32/64 (H, W, 3)
unit normals and a bool (H, W) mask. It computes that image's errors in float64,
atan2(|p x g|, p . g) in degrees (accurate near 0 and 180, unlike arccos), adds
them to the running sums and threshold counts, and appends them to an unnamed
temporary file (8 bytes per valid pixel on disk, nothing in memory).

`result()` returns mean, median (degrees) and within_11.25/22.5/30 (percent).
The median is exact (np.median of every float64 error, the mean of the two
middle values for an even count) and found by selection, never by holding the
errors: a pass over the spill file counts the errors per bin of a 65536-bin
histogram over the current range; the bin holding the wanted rank becomes the
range. When that bin holds at most `budget` errors (1M by default, 8 MB), one
more pass collects them and np.partition picks the exact value; when every
error in the range is equal, that value is the answer. Memory is one image's
errors, one read chunk (`chunk` values) and the histogram: independent of the
number of test pixels.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from benchmark.errors import SslBenchError

THRESHOLDS = (11.25, 22.5, 30.0)
METRIC_NAMES = ("mean", "median", *(f"within_{t:g}" for t in THRESHOLDS))
UNIT_TOLERANCE = 1e-2  # |length - 1| allowed on valid pixels (8-bit PNG normals decode to within 0.007)
BINS = 65536


def angular_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """float64 angles in degrees between unit vectors pred[..., :] and gt[..., :], in [0, 180]."""
    p, g = pred.astype(np.float64, copy=False), gt.astype(np.float64, copy=False)
    cross = np.cross(p, g)
    return np.degrees(np.arctan2(np.sqrt((cross * cross).sum(-1)), (p * g).sum(-1)))


def check_normals(normals: np.ndarray, mask: np.ndarray, what: str, shape: tuple[int, ...] | None = None) -> None:
    """SslBenchError unless normals are (H, W, 3), finite and of unit length wherever mask is set."""
    if normals.ndim != 3 or normals.shape[-1] != 3:
        raise SslBenchError(f"{what}: expected normals of shape (H, W, 3), got {normals.shape}")
    if shape is not None and normals.shape[:2] != shape:
        raise SslBenchError(f"{what} is {normals.shape[1]}x{normals.shape[0]} but its ground truth is "
                            f"{shape[1]}x{shape[0]}; they must match")
    if mask.shape != normals.shape[:2]:
        raise SslBenchError(f"{what}: mask {mask.shape} and normals {normals.shape[:2]} differ in size")
    valid = normals[mask]
    if not np.isfinite(valid).all():
        raise SslBenchError(f"{what}: normals hold NaN or infinite values on valid pixels")
    length = np.sqrt((valid.astype(np.float64) ** 2).sum(-1))
    bad = np.abs(length - 1) > UNIT_TOLERANCE
    if bad.any():
        raise SslBenchError(f"{what}: {int(bad.sum())} of {len(length)} valid normals are not unit vectors "
                            f"(length {float(length[bad][0]):.3g}); normalise them (|n| = 1)")


class NormalErrors:
    """Pooled angular errors of a test set: add() image by image, then result(); see the module docstring."""

    def __init__(self, folder: Path | None = None, chunk: int = 1 << 20, budget: int = 1 << 20) -> None:
        self._spill: IO[bytes] = tempfile.TemporaryFile(dir=folder, prefix="normal-errors-")
        self.chunk = chunk
        self.budget = budget
        self.count = 0
        self._sums: list[float] = []
        self._within = np.zeros(len(THRESHOLDS), dtype=np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, what: str = "prediction") -> None:
        """One image: pred and gt (H, W, 3) unit normals, mask bool (H, W) of valid pixels."""
        check_normals(gt, mask, f"{what} ground truth")
        check_normals(pred, mask, what, shape=gt.shape[:2])
        errors = angular_errors(pred[mask], gt[mask])
        self._sums.append(math.fsum(errors))
        self._within += [(errors < t).sum() for t in THRESHOLDS]
        self.count += len(errors)
        self._spill.write(errors.tobytes())

    def close(self) -> None:
        self._spill.close()

    def __enter__(self) -> NormalErrors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _chunks(self) -> Iterator[np.ndarray]:
        self._spill.flush()
        self._spill.seek(0)
        while True:
            data = self._spill.read(self.chunk * 8)
            if not data:
                return
            yield np.frombuffer(data, dtype=np.float64)

    def select(self, rank: int) -> float:
        """The exact rank-th smallest error (0-based), by histogram narrowing and a final np.partition."""
        low, high, below = 0.0, np.nextafter(180.0, np.inf), 0  # range [low, high); `below` errors under low
        while True:
            edges = np.linspace(low, high, BINS + 1)
            edges = np.minimum(edges, high)
            edges[-1] = high
            counts = np.zeros(BINS, dtype=np.int64)
            smallest, largest = np.inf, -np.inf
            for values in self._chunks():
                inside = values[(values >= low) & (values < high)]
                if len(inside):
                    counts += np.bincount(np.searchsorted(edges, inside, side="right") - 1, minlength=BINS)
                    smallest, largest = min(smallest, inside.min()), max(largest, inside.max())
            if smallest == largest:  # every error in the range is the same value
                return float(smallest)
            cumulative = np.cumsum(counts)
            b = int(np.searchsorted(cumulative, rank - below, side="right"))
            below += int(cumulative[b - 1]) if b else 0
            low, high = float(edges[b]), float(edges[b + 1])
            if counts[b] <= self.budget:
                kept = np.concatenate([v[(v >= low) & (v < high)] for v in self._chunks()] or [np.empty(0)])
                return float(np.partition(kept, rank - below)[rank - below])

    def result(self) -> dict[str, float]:
        """mean and median (degrees), within_T (percent of valid pixels with error < T degrees)."""
        if self.count == 0:
            raise SslBenchError("no valid pixel in the whole test set: every mask is empty; check the masks")
        middle = [(self.count - 1) // 2, self.count // 2]
        low = self.select(middle[0])
        median = low if middle[0] == middle[1] else (low + self.select(middle[1])) / 2
        metrics = {"mean": math.fsum(self._sums) / self.count, "median": median}
        metrics.update({f"within_{t:g}": 100.0 * int(n) / self.count for t, n in zip(THRESHOLDS, self._within)})
        return metrics
