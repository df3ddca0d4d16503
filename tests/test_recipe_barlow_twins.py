"""Barlow Twins' loss against a float64 formula written out element by element; biases and BN take bias_lr."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.config import build_config
from benchmark.training.optim import is_norm_or_bias
from checkpoints.models import build_seeded
from checkpoints.recipes.barlow_twins import BarlowTwins, BarlowTwinsConfig, barlow_twins_loss


def barlow_twins_float64(z1: np.ndarray, z2: np.ndarray, lambd: float, eps: float = 1e-5) -> float:
    """Zbontar et al. eq. 1-2: each embedding dimension standardised over the batch, C_ij summed image by image."""
    n, d = z1.shape

    def standardised(z: np.ndarray) -> list[list[float]]:
        columns = []
        for j in range(d):
            mean = sum(float(z[b, j]) for b in range(n)) / n
            variance = sum((float(z[b, j]) - mean) ** 2 for b in range(n)) / n
            columns.append([(float(z[b, j]) - mean) / math.sqrt(variance + eps) for b in range(n)])
        return columns

    a, b = standardised(z1), standardised(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c ** 2
    return loss


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_loss_matches_the_formula(lambd: float) -> None:
    rng = np.random.default_rng(3)
    z1 = rng.normal(size=(10, 7))
    z2 = z1 + 0.5 * rng.normal(size=(10, 7))
    got = barlow_twins_loss(torch.tensor(z1, dtype=torch.float32), torch.tensor(z2, dtype=torch.float32), lambd)
    assert float(got) == pytest.approx(barlow_twins_float64(z1, z2, lambd), rel=1e-5)


def test_identical_decorrelated_views_cost_nothing() -> None:
    # two equal views whose dimensions are uncorrelated over the batch: C = I up to eps
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert float(barlow_twins_loss(z, z.clone(), 0.0051)) == pytest.approx(0.0, abs=1e-4)


def test_biases_and_bn_parameters_take_bias_lr() -> None:
    """Their gradients are scaled by bias_lr / lr (exactly a separate lr: they take no decay nor LARS scaling)."""
    grads = []
    for bias_lr in (0.2, 0.0048):
        config = build_config(BarlowTwinsConfig, {"projector_dim": 16, "lr": 0.2, "bias_lr": bias_lr}, owner="test")
        torch.manual_seed(0)
        model = BarlowTwins().build(build_seeded("resnet18", seed=0), config, dataset_size=8)
        views = tuple(torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
        model(views, torch.arange(8)).backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    exempt = {f"{module_name}.{name}".lstrip(".") for module_name, module in model.named_modules()
              for name, p in module.named_parameters(recurse=False) if is_norm_or_bias(module, name, p)}
    assert exempt and len(exempt) < len(grads[0])
    for name, plain in grads[0].items():
        expected = plain * (0.0048 / 0.2) if name in exempt else plain
        torch.testing.assert_close(grads[1][name], expected, rtol=1e-5, atol=1e-9)


def test_bias_lr_needs_an_optimizer_that_sees_gradient_scale() -> None:
    with pytest.raises(ValueError, match="AdamW"):
        BarlowTwinsConfig(optimizer="adamw")
    BarlowTwinsConfig(optimizer="adamw", lr=1e-3, bias_lr=1e-3)
