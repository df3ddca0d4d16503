"""Normal-error metrics against a float64 formula on hand-made fields: identical, rotated by known angles, masked."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.errors import SslBenchError
from protocols.normals_metrics import NormalErrors, angular_errors


def unit_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    field = rng.normal(size=(h, w, 3))
    return field / np.linalg.norm(field, axis=-1, keepdims=True)


def rotate_by(normals: np.ndarray, angles_deg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each normal turned by its angle about an axis perpendicular to it (Rodrigues): the error is the angle."""
    axis = np.cross(normals, rng.normal(size=normals.shape))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    theta = np.radians(angles_deg)[..., None]
    return normals * np.cos(theta) + np.cross(axis, normals) * np.sin(theta)


def reference(preds, gts, masks) -> dict[str, float]:
    """The float64 formula: arccos of the clipped dot product over every valid pixel pooled."""
    errors = np.concatenate([np.degrees(np.arccos(np.clip((p.astype(np.float64) * g).sum(-1)[m], -1, 1)))
                             for p, g, m in zip(preds, gts, masks)])
    return {"mean": errors.mean(), "median": float(np.median(errors)),
            **{f"within_{t:g}": 100 * np.mean(errors < t) for t in (11.25, 22.5, 30)}}


def score(preds, gts, masks, **kwargs) -> dict[str, float]:
    with NormalErrors(**kwargs) as errors:
        for p, g, m in zip(preds, gts, masks):
            errors.add(p, g, m)
        return errors.result()


def test_identical_fields_score_zero() -> None:
    rng = np.random.default_rng(0)
    gts = [unit_field(rng, 5, 7).astype(np.float32) for _ in range(3)]
    masks = [np.ones((5, 7), bool)] * 3
    metrics = score(gts, gts, masks)
    assert metrics["mean"] < 1e-4 and metrics["median"] < 1e-4
    assert metrics["within_11.25"] == metrics["within_22.5"] == metrics["within_30"] == 100.0


def test_rotated_by_known_angles_matches_float64_formula() -> None:
    rng = np.random.default_rng(1)
    gts, preds, masks, angles = [], [], [], []
    for k in range(4):
        g = unit_field(rng, 6 + k, 9)
        a = rng.choice([0.0, 5.0, 11.0, 11.5, 20.0, 29.0, 31.0, 45.0, 90.0, 170.0], size=g.shape[:2])
        gts.append(g)
        preds.append(rotate_by(g, a, rng))
        masks.append(rng.random(g.shape[:2]) < 0.8)
        angles.append(a[masks[-1]])
    expected = reference(preds, gts, masks)
    got = score(preds, gts, masks)
    truth = np.concatenate(angles)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    assert got["median"] == pytest.approx(np.median(truth), abs=1e-6)
    assert got["within_22.5"] == pytest.approx(100 * np.mean(truth < 22.5))


def test_masked_pixels_are_ignored() -> None:
    rng = np.random.default_rng(2)
    g = unit_field(rng, 8, 8)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 1:7] = True
    pred = rotate_by(g, np.full((8, 8), 10.0), rng)
    pred[~mask] = np.nan  # garbage where the ground truth is invalid
    g_bad = g.copy()
    g_bad[~mask] = 0.0
    metrics = score([pred], [g_bad], [mask])
    assert metrics["mean"] == pytest.approx(10.0) and metrics["median"] == pytest.approx(10.0)
    assert metrics["within_11.25"] == 100.0 and metrics["within_22.5"] == 100.0


@pytest.mark.parametrize("budget", [1, 3, 1 << 20])
def test_median_exact_by_selection_with_small_memory(budget) -> None:
    """Tiny chunks and budgets force the narrowing passes; the result is np.median's, bit for bit."""
    rng = np.random.default_rng(3)
    gts = [unit_field(rng, 7, 5) for _ in range(3)]
    preds = [rotate_by(g, rng.uniform(0, 60, size=(7, 5)), rng) for g in gts]
    masks = [rng.random((7, 5)) < 0.9 for _ in gts]
    errors = np.concatenate([angular_errors(p[m], g[m]) for p, g, m in zip(preds, gts, masks)])
    for n in (len(errors), len(errors) - 1):  # an even and an odd count
        with NormalErrors(chunk=7, budget=budget) as stats:
            stats._spill.write(errors[:n].tobytes())
            stats.count, stats._sums = n, [float(errors[:n].sum())]
            assert stats.result()["median"] == np.median(errors[:n])
    ties = np.repeat([3.0, 7.5, 7.5, 9.0], 50)
    with NormalErrors(chunk=5, budget=2) as stats:
        stats._spill.write(ties.tobytes())
        stats.count, stats._sums = len(ties), [float(ties.sum())]
        assert stats.result()["median"] == 7.5


def test_atan2_formula_is_accurate_near_zero() -> None:
    g = np.array([[0.0, 0.0, 1.0]])
    p = np.array([[np.sin(np.radians(1e-5)), 0.0, np.cos(np.radians(1e-5))]])
    assert angular_errors(p, g)[0] == pytest.approx(1e-5, rel=1e-6)


@pytest.mark.parametrize("case", ["size", "not_unit", "nan", "gt_not_unit"])
def test_bad_inputs_one_line(case) -> None:
    rng = np.random.default_rng(4)
    g = unit_field(rng, 4, 6)
    p, mask = g.copy(), np.ones((4, 6), bool)
    if case == "size":
        p = unit_field(rng, 4, 5)
    elif case == "not_unit":
        p = p * 2
    elif case == "nan":
        p[1, 1] = np.nan
    else:
        g = g * 0.5
    with NormalErrors() as errors, pytest.raises(SslBenchError) as error:
        errors.add(p, g, mask, what="image 0007")
    assert "\n" not in str(error.value) and ("0007" in str(error.value))


def test_empty_masks_everywhere_refused() -> None:
    rng = np.random.default_rng(5)
    g = unit_field(rng, 3, 3)
    with NormalErrors() as errors:
        errors.add(g, g, np.zeros((3, 3), bool))
        with pytest.raises(SslBenchError, match="no valid pixel"):
            errors.result()
