"""MoCo, BYOL and SimSiam pieces: losses against float64 formulas, stop-gradients, EMA, queue order, tau, shuffle BN."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from benchmark import distributed
from checkpoints.models import build_seeded
from checkpoints.recipes.base import pooled
from checkpoints.recipes.byol import ByolConfig, ByolModel
from checkpoints.recipes.moco import MocoConfig, MocoModel, shuffle_batch, unshuffle_batch
from checkpoints.recipes.siamese import (cosine_momentum, ema_update_, enqueue_, info_nce, negative_cosine,
                                         normalized_mse)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def tensors(*arrays: np.ndarray, grad: bool = False) -> list[torch.Tensor]:
    return [torch.tensor(a, dtype=torch.float32, requires_grad=grad) for a in arrays]


def info_nce_float64(q: np.ndarray, k: np.ndarray, queue: np.ndarray, temperature: float) -> float:
    """Oord et al.'s InfoNCE as MoCo writes it (eq. 1), one query at a time: positive k_i, negatives the queue."""
    q, k, queue = unit(q.astype(np.float64)), unit(k.astype(np.float64)), unit(queue.astype(np.float64))
    total = 0.0
    for i in range(len(q)):
        positive = math.exp(q[i] @ k[i] / temperature)
        negatives = sum(math.exp(q[i] @ row / temperature) for row in queue)
        total += -math.log(positive / (positive + negatives))
    return total / len(q)


@pytest.mark.parametrize("temperature", [0.07, 0.2])
def test_info_nce_matches_the_formula_and_leaves_keys_and_queue_without_gradient(temperature: float) -> None:
    rng = np.random.default_rng(0)
    q, k, queue = rng.normal(size=(6, 5)), rng.normal(size=(6, 5)), rng.normal(size=(11, 5))
    tq, tk, tqueue = tensors(q, k, queue, grad=True)
    loss = info_nce(tq, tk, tqueue, temperature)
    assert loss.item() == pytest.approx(info_nce_float64(q, k, queue, temperature), rel=1e-5)
    loss.backward()
    assert tq.grad is not None and tk.grad is None and tqueue.grad is None


def test_info_nce_reads_the_queue_as_it_was_when_enqueued_into_afterwards() -> None:
    q, k, queue = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3), torch.randn(8, 3)
    loss = info_nce(q, k, queue, 0.2)
    expected = info_nce_float64(q.detach().numpy(), k.numpy(), queue.numpy(), 0.2)
    enqueue_(queue, torch.zeros((), dtype=torch.long), k)
    loss.backward()  # no "modified by an inplace operation" error
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_byol_normalized_mse_is_the_squared_distance_of_unit_vectors() -> None:
    rng = np.random.default_rng(1)
    p, z = rng.normal(size=(7, 4)), rng.normal(size=(7, 4))
    expected = float(np.mean(np.sum((unit(p) - unit(z)) ** 2, axis=1)))
    tp, tz = tensors(p, z, grad=True)
    loss = normalized_mse(tp, tz)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert tp.grad is not None and tz.grad is None


def test_negative_cosine_matches_the_formula_and_its_gradient_skips_the_stopped_branch() -> None:
    """Both sides come from one leaf x: p = 2x, z = flip(x) + 1. The gradient must be the p path's alone."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 3))
    p, z = 2 * x, x[::-1] + 1
    cos = np.sum(p * z, axis=1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(z, axis=1))
    # d(-cos)/dp = -(z / (|p||z|) - cos p / |p|^2), averaged over the batch; dp/dx = 2
    norm_p, norm_z = np.linalg.norm(p, axis=1, keepdims=True), np.linalg.norm(z, axis=1, keepdims=True)
    grad_p = -(z / (norm_p * norm_z) - cos[:, None] * p / norm_p ** 2) / len(x)
    (tx,) = tensors(x, grad=True)
    loss = negative_cosine(2 * tx, tx.flip(0) + 1)
    assert loss.item() == pytest.approx(-float(np.mean(cos)), rel=1e-5)
    loss.backward()
    np.testing.assert_allclose(tx.grad.numpy(), 2 * grad_p, rtol=1e-4, atol=1e-6)


def test_ema_update_follows_the_formula_on_parameters_and_leaves_buffers_and_the_online_network() -> None:
    torch.manual_seed(0)
    target, online = (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)) for _ in range(2))
    online[1].running_mean.fill_(5.0)
    before = {name: value.detach().double().clone() for name, value in target.state_dict().items()}
    source = {name: value.detach().double().clone() for name, value in online.state_dict().items()}
    ema_update_(target, online, 0.9)
    parameters = {name for name, _ in target.named_parameters()}
    for name, value in target.state_dict().items():
        expected = 0.9 * before[name] + 0.1 * source[name] if name in parameters else before[name]
        torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
    for name, value in online.state_dict().items():
        assert torch.equal(value.double(), source[name])


def enqueue_one_at_a_time(queue: np.ndarray, pointer: int, keys: np.ndarray) -> int:
    for key in keys:
        queue[pointer] = key
        pointer = (pointer + 1) % len(queue)
    return pointer


def test_queue_writes_the_oldest_rows_first_and_wraps_around() -> None:
    queue, pointer = torch.zeros(5, 2), torch.zeros((), dtype=torch.long)
    enqueue_(queue, pointer, torch.tensor([[1.0, 1], [2, 2], [3, 3]]))
    assert queue[:, 0].tolist() == [1, 2, 3, 0, 0] and int(pointer) == 3
    enqueue_(queue, pointer, torch.tensor([[4.0, 4], [5, 5], [6, 6]]))
    assert queue[:, 0].tolist() == [6, 2, 3, 4, 5] and int(pointer) == 1
    reference, at = queue.numpy().copy(), 1
    generator = torch.Generator().manual_seed(0)
    for count in (4, 5, 2, 7, 1, 12):  # sizes that do not divide the queue, one of them larger than it
        keys = torch.randn(count, 2, generator=generator)
        enqueue_(queue, pointer, keys)
        at = enqueue_one_at_a_time(reference, at, keys.numpy())
        assert np.array_equal(queue.numpy(), reference) and int(pointer) == at


def test_byol_tau_rises_from_its_base_to_one_by_a_cosine() -> None:
    base, total = 0.996, 1000
    for step in (0, 1, 250, 500, 999, 1000):
        expected = 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2
        assert cosine_momentum(base, step, total) == pytest.approx(expected, abs=1e-15)
    assert cosine_momentum(base, 0, total) == base and cosine_momentum(base, total, total) == 1.0
    assert cosine_momentum(base, 500, total) == pytest.approx((1 + base) / 2)
    assert cosine_momentum(base, 1200, total) == 1.0


def small_views(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 32, 32, generator=generator), torch.randn(4, 3, 32, 32, generator=generator)


def test_byol_moves_its_target_by_the_scheduled_tau_of_its_step_counter() -> None:
    config = ByolConfig(epochs=2, batch_size=4, hidden_dim=16, projection_dim=8, target_momentum=0.9)
    model = ByolModel(build_seeded("resnet18", seed=0), config, total_steps=10)
    for parameter in model.target_projector.parameters():
        parameter.data.zero_()
    model.step.fill_(3)
    model(small_views(0), torch.arange(4))
    tau = 1 - 0.1 * (math.cos(math.pi * 3 / 10) + 1) / 2
    for target, online in zip(model.target_projector.parameters(), model.projector.parameters()):
        torch.testing.assert_close(target, (1 - tau) * online.detach())
    assert int(model.step) == 4 and model.target_trunk.training
    assert not any(p.requires_grad for p in model.target_trunk.parameters())


def test_moco_updates_the_key_encoder_before_computing_the_keys_it_enqueues() -> None:
    torch.manual_seed(0)
    config = MocoConfig(queue_size=6, key_momentum=0.0, hidden_dim=16, projection_dim=8)
    model = MocoModel(build_seeded("resnet18", seed=0), config)
    with torch.no_grad():
        for parameter in model.projector.parameters():  # online != key encoder: only the update makes them equal
            parameter.add_(1.0)
    queries, keys = small_views(1)
    model((queries, keys), torch.arange(4))
    with torch.no_grad():
        expected = nn.functional.normalize(model.projector(pooled(model.trunk, keys)), dim=1)
    torch.testing.assert_close(model.queue[:4], expected)
    assert int(model.queue_pointer) == 4


def _shuffle_on_rank(rank: int, world_size: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert distributed.init_distributed(init_method=f"file://{tmp}/rendezvous")
    try:
        torch.manual_seed(0)
        images = torch.arange(8.0).view(8, 1)[rank * 4:(rank + 1) * 4]
        shuffled, inverse = shuffle_batch(images)
        keys = unshuffle_batch(shuffled * 10, inverse)  # a per-image "encoder"
        torch.save({"shuffled": shuffled, "keys": keys}, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_shuffle_bn_spreads_the_global_batch_and_gives_each_process_its_own_keys_back(tmp_path) -> None:
    images = torch.arange(8.0).view(8, 1)
    shuffled, inverse = shuffle_batch(images)
    assert shuffled is images and inverse is None  # one process: a no-op
    mp.spawn(_shuffle_on_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert sorted(torch.cat([p["shuffled"] for p in parts]).flatten().tolist()) == list(range(8))
    assert any(not torch.equal(p["shuffled"], images[r * 4:(r + 1) * 4]) for r, p in enumerate(parts))
    for rank, part in enumerate(parts):
        assert torch.equal(part["keys"], images[rank * 4:(rank + 1) * 4] * 10)
