"""SimCLR's NT-Xent against a float64 formula, and negatives gathered across 2 gloo processes equal one process."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmark import distributed
from benchmark.protocol import InputSpec
from checkpoints.recipes.simclr import Simclr, SimclrConfig, nt_xent


def nt_xent_float64(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
    """The loss of Chen et al. (eq. 1), averaged over the 2N anchors, written out one anchor at a time."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        denominator = sum(math.exp(z[i] @ z[k] / temperature) for k in others)
        total += -math.log(math.exp(z[i] @ z[positive] / temperature) / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_the_formula(temperature: float) -> None:
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    got = nt_xent(torch.tensor(z1, dtype=torch.float32), torch.tensor(z2, dtype=torch.float32), temperature)
    assert float(got) == pytest.approx(nt_xent_float64(z1, z2, temperature), rel=1e-5)


def _loss_on_rank(rank: int, world_size: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert distributed.init_distributed(init_method=f"file://{tmp}/rendezvous")
    try:
        z1, z2 = global_batch()
        half = len(z1) // world_size
        mine = slice(rank * half, (rank + 1) * half)
        a, b = z1[mine].clone().requires_grad_(), z2[mine].clone().requires_grad_()
        loss = nt_xent(a, b, 0.2)
        loss.backward()
        # DDP averages gradients over processes: the global gradient is the mean of the local ones
        grads = torch.cat([a.grad, b.grad]) / world_size
        torch.save({"loss": loss.detach(), "grads": grads}, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(8, 6, generator=generator), torch.randn(8, 6, generator=generator)


def test_negatives_from_two_processes_give_the_one_process_loss_and_gradients(tmp_path) -> None:
    mp.spawn(_loss_on_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    z1, z2 = global_batch()
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = nt_xent(a, b, 0.2)
    loss.backward()
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    eps = torch.finfo(torch.float32).eps
    assert float(sum(p["loss"] for p in parts) / 2) == pytest.approx(float(loss), rel=64 * eps)
    for rank, part in enumerate(parts):
        mine = slice(rank * 4, (rank + 1) * 4)
        expected = torch.cat([a.grad[mine], b.grad[mine]])
        torch.testing.assert_close(part["grads"], expected, rtol=0, atol=64 * eps * float(expected.abs().max()))


def test_crop_min_scale_reaches_the_crop_and_is_checked() -> None:
    views = Simclr().views(SimclrConfig(crop_min_scale=0.3), InputSpec(32, (0.5,), (0.25,)), None)
    crop = views.transforms[0].transforms[0]
    assert crop.scale == (0.3, 1.0)
    with pytest.raises(ValueError, match="crop_min_scale"):
        SimclrConfig(crop_min_scale=0.0)
