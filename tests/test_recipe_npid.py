"""NPID's NCE with a memory bank against the paper's formulas in float64, with the same sampled negatives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.config import build_config
from checkpoints.models import build_seeded
from checkpoints.recipes.base import pooled
from checkpoints.recipes.npid import Npid, NpidConfig, nce_loss, nce_probabilities, update_bank


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def nce_float64(features: np.ndarray, bank: np.ndarray, index: np.ndarray, negatives: np.ndarray,
                temperature: float, z: float) -> float:
    """Wu et al. eq. 2-7, one image and one noise sample at a time.

    P(i|f) = exp(v_i . f / T) / Z, h(i, f) = P(i|f) / (P(i|f) + m P_n) with P_n = 1/N,
    loss = -log h(positive) - sum over the m noise samples of log(1 - h(noise)).
    """
    n, m = len(bank), negatives.shape[1]

    def h(j: int, f: np.ndarray) -> float:
        p = math.exp(float(bank[j] @ f) / temperature) / z
        return p / (p + m / n)

    total = 0.0
    for b, f in enumerate(features):
        total -= math.log(h(int(index[b]), f))
        total -= sum(math.log(1 - h(int(j), f)) for j in negatives[b])
    return total / len(features)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_nce_loss_matches_the_formula(temperature: float) -> None:
    rng = np.random.default_rng(0)
    bank, features = unit(rng.normal(size=(20, 8))), unit(rng.normal(size=(4, 8)))
    index, negatives = rng.choice(20, size=4, replace=False), rng.integers(0, 20, size=(4, 6))
    z = 37.5
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    probabilities = nce_probabilities(as_tensor(features), as_tensor(bank), torch.tensor(index),
                                      torch.tensor(negatives), temperature)
    got = nce_loss(probabilities / z, len(bank))
    assert float(got) == pytest.approx(nce_float64(features, bank, index, negatives, temperature, z), rel=1e-5)


def test_bank_update_moves_only_the_batch_rows() -> None:
    rng = np.random.default_rng(1)
    bank, features = unit(rng.normal(size=(10, 5))), unit(rng.normal(size=(3, 5)))
    index = np.array([7, 2, 4])
    updated = torch.tensor(bank, dtype=torch.float32)
    update_bank(updated, torch.tensor(index), torch.tensor(features, dtype=torch.float32), 0.5)
    expected = bank.copy()
    expected[index] = unit(0.5 * bank[index] + 0.5 * features)
    np.testing.assert_allclose(updated.numpy(), expected, rtol=0, atol=1e-6)


def test_model_forward_is_the_papers_nce_with_its_drawn_negatives_and_z() -> None:
    """Z = N x mean exp(v . f / T) over the first batch, kept; the loss of those negatives; the bank updated after."""
    config = build_config(NpidConfig, {"negatives": 6, "embedding_dim": 8}, owner="test")
    torch.manual_seed(0)
    model = Npid().build(build_seeded("resnet18", seed=0), config, dataset_size=20)
    bank = model.bank.double().numpy().copy()
    assert np.allclose(np.linalg.norm(bank, axis=1), 1) and float(model.z) == 0
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    index = torch.tensor([3, 11, 0, 19])
    torch.manual_seed(5)
    loss = model((images,), index)
    torch.manual_seed(5)
    negatives = torch.randint(20, (4, 6)).numpy()
    with torch.no_grad():  # train-mode BN: the same batch gives the same features again
        features = unit(model.head(pooled(model.trunk, images)).double().numpy())
    scores = np.exp(np.einsum("bkd,bd->bk", bank[np.concatenate([index.numpy()[:, None], negatives], 1)],
                              features) / config.temperature)
    z = 20 * scores.mean()
    assert float(model.z) == pytest.approx(z, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(nce_float64(features, bank, index.numpy(), negatives, 0.07, z), rel=1e-4)
    expected = bank.copy()
    expected[index.numpy()] = unit(0.5 * bank[index.numpy()] + 0.5 * features)
    np.testing.assert_allclose(model.bank.numpy(), expected, rtol=0, atol=1e-5)
    model((images,), index)
    assert float(model.z) == pytest.approx(z, rel=1e-5)  # estimated once


def test_step_schedule_milestones_are_epochs_and_every_parameter_decays() -> None:
    spec = NpidConfig().train_spec(seed=0)
    assert spec.milestone_epochs == (120, 160) and spec.optim.schedule == "step"
    assert not spec.optim.no_decay_norm_and_bias and spec.optim.lr == pytest.approx(0.03)
    with pytest.raises(ValueError, match="milestones"):
        NpidConfig(milestones=(160, 120))
