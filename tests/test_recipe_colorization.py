"""Colorization: Lab against a float64 formula and published values; ab bins, soft encoding, rebalancing, decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from checkpoints.recipes.colorization import (ab_bins, annealed_mean, lab_to_rgb, lightness_only, nearest_bins,
                                              rebalancing_weights, rgb_to_lab, smoothed_prior, soft_encode)

M = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])


def lab_float64(rgb: np.ndarray) -> np.ndarray:
    """CIE 1976 L*a*b* of sRGB (N, 3) in [0, 1], D65 white of the sRGB matrix, one pixel at a time."""
    white = M @ np.ones(3)
    out = []
    for pixel in rgb:
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in pixel]
        ratios = (M @ np.array(linear)) / white
        fx, fy, fz = (t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116 for t in ratios)
        out.append([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)])
    return np.array(out)


def test_lab_matches_the_float64_formula_and_published_values() -> None:
    rgb = np.random.default_rng(0).random((200, 3))
    rgb[:20] *= 0.03  # the linear branches near black
    got = rgb_to_lab(torch.tensor(rgb), dim=1).numpy()
    np.testing.assert_allclose(got, lab_float64(rgb), rtol=0, atol=1e-9)
    got32 = rgb_to_lab(torch.tensor(rgb, dtype=torch.float32), dim=1).numpy()
    np.testing.assert_allclose(got32, lab_float64(rgb), rtol=0, atol=2e-3)
    # Lindbloom's sRGB (D65) primaries and white
    published = {(1, 0, 0): (53.2408, 80.0925, 67.2032), (0, 1, 0): (87.7347, -86.1827, 83.1793),
                 (0, 0, 1): (32.2970, 79.1875, -107.8602), (1, 1, 1): (100.0, 0.0, 0.0)}
    for colour, lab in published.items():
        np.testing.assert_allclose(rgb_to_lab(torch.tensor([colour], dtype=torch.float64), dim=1)[0], lab, atol=1e-4)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_lab_round_trips(dtype: torch.dtype, tolerance: float) -> None:
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=dtype)
    back = lab_to_rgb(rgb_to_lab(rgb))
    assert back.dtype == dtype
    torch.testing.assert_close(back, rgb, rtol=0, atol=tolerance)


def test_lightness_only_keeps_l_and_drops_colour() -> None:
    rgb = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grey = lightness_only(rgb)
    torch.testing.assert_close(grey[0], grey[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(grey[0], grey[2], rtol=0, atol=1e-12)
    lab, grey_lab = rgb_to_lab(rgb), rgb_to_lab(grey)
    torch.testing.assert_close(grey_lab[0], lab[0], rtol=0, atol=1e-9)
    assert grey_lab[1:].abs().max() < 1e-9


def test_ab_bins_cover_the_gamut_on_a_grid() -> None:
    centres = ab_bins(10)
    assert len(centres) == 261 and len(ab_bins(20)) < len(centres)
    assert torch.equal(centres, torch.round(centres / 10) * 10) and (centres == 0).all(1).any()
    # every displayable colour's nearest bin lies within half a cell in each direction
    ab = rgb_to_lab(torch.rand(5000, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64), dim=1)[:, 1:]
    nearest = centres[nearest_bins(ab, centres)[1][:, 0]]
    assert (ab - nearest).abs().max() <= 5 + 1e-9


def test_bin_centres_encode_to_themselves() -> None:
    centres = ab_bins(10)
    _, indices = nearest_bins(centres, centres)
    assert torch.equal(indices[:, 0], torch.arange(len(centres)))
    indices, weights = soft_encode(centres, centres)
    assert torch.equal(indices[:, 0], torch.arange(len(centres)))
    # at a centre the neighbours are 10 and 14.1 away: exp(-100/50) of the centre's weight at most
    assert (weights[:, 0] > 0.5).all()


def test_soft_encoding_sums_to_one_and_weighs_the_nearest_bin_most() -> None:
    centres = ab_bins(10)
    ab = torch.tensor([[3.0, -4.0], [53.0, 57.0], [-21.0, 38.0], [0.0, 0.0]], dtype=torch.float64)
    indices, weights = soft_encode(ab, centres, neighbours=5, sigma=5.0)
    assert indices.shape == weights.shape == (4, 5)
    torch.testing.assert_close(weights.sum(1), torch.ones(4, dtype=torch.float64))
    assert torch.equal(weights.argmax(1), torch.zeros(4, dtype=torch.long))
    distances = (ab[:, None] - centres[None]).norm(dim=2)
    assert torch.equal(indices[:, 0], distances.argmin(1))
    expected = torch.exp(-distances.gather(1, indices) ** 2 / 50)
    torch.testing.assert_close(weights, expected / expected.sum(1, keepdim=True))


def test_rebalancing_weights_have_prior_weighted_mean_one() -> None:
    centres = ab_bins(10)
    counts = torch.zeros(len(centres), dtype=torch.float64)
    counts[:40] = torch.arange(1, 41, dtype=torch.float64) ** 2
    prior = smoothed_prior(counts, centres, sigma=5.0)
    assert float(prior.sum()) == pytest.approx(1.0) and (prior > 0).all()
    for lam in (0.0, 0.5, 1.0):
        weights = rebalancing_weights(prior, lam)
        assert float((prior * weights).sum()) == pytest.approx(1.0)
    weights = rebalancing_weights(prior, 0.5)
    assert weights[prior.argmin()] > 1 > weights[prior.argmax()]  # rare colours count more
    torch.testing.assert_close(rebalancing_weights(prior, 1.0), torch.ones_like(prior))
    expected = 1 / (0.5 * prior + 0.5 / len(prior))
    torch.testing.assert_close(weights, expected / (prior * expected).sum())


def test_annealed_mean_is_the_mean_at_one_and_the_mode_near_zero() -> None:
    centres = ab_bins(10).float()
    logits = torch.randn(2, len(centres), 3, 3, generator=torch.Generator().manual_seed(4)) * 3
    mean = torch.einsum("bqhw,qc->bchw", torch.softmax(logits, 1), centres)
    torch.testing.assert_close(annealed_mean(logits, centres, temperature=1.0), mean)
    mode = centres[logits.argmax(1)].permute(0, 3, 1, 2)
    torch.testing.assert_close(annealed_mean(logits, centres, temperature=1e-3), mode, rtol=0, atol=1e-3)
    at_038 = annealed_mean(logits, centres)  # between the two
    assert (at_038 - mode).abs().mean() < (mean - mode).abs().mean()
