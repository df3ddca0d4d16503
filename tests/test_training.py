"""The training engine: schedules and groups against formulas, exact resume, and 2-process DDP equal to one."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from benchmark import distributed
from benchmark.errors import SslBenchError
from benchmark.training import OptimSpec, SeededAugmentation, Trainer, TrainSpec, parameter_groups
from benchmark.training.optim import LARS, lr_factor
from benchmark.training.sampling import ResumableSampler


class Points(torch.utils.data.Dataset):
    """n random 3x8x8 'images' with a class each; item i is (image, i)."""

    def __init__(self, n: int = 48, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 8, 8, generator=generator)
        self.labels = torch.randint(0, 4, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], index


def jitter(image: torch.Tensor) -> torch.Tensor:
    """A random flip and noise: the global torch RNG, as torchvision's transforms use it."""
    if torch.rand(1).item() < 0.5:
        image = image.flip(-1)
    return image + 0.1 * torch.randn_like(image)


def small_net(batch_norm: bool = True) -> nn.Module:
    torch.manual_seed(0)
    norm = [nn.BatchNorm2d(6)] if batch_norm else []
    return nn.Sequential(nn.Conv2d(3, 6, 3), *norm, nn.ReLU(), nn.Flatten(), nn.Dropout(0.2), nn.Linear(216, 4))


def classify(data: Points):
    def step(model: nn.Module, batch):
        images, index = batch
        return nn.functional.cross_entropy(model(images), data.labels[index])
    return step


def spec(**changes) -> TrainSpec:
    values = dict(optim=OptimSpec(name="sgd", lr=0.05, weight_decay=1e-4, schedule="cosine", warmup_steps=2),
                  batch_size=8, epochs=3, save_every=2, log_every=1)
    values.update(changes)
    return TrainSpec(**values)


class Interrupted(Exception):
    pass


def interrupt_at(step_fn, calls: int):
    count = {"n": 0}

    def step(model, batch):
        count["n"] += 1
        if count["n"] > calls:
            raise Interrupted
        return step_fn(model, batch)
    return step


@pytest.mark.parametrize("accumulate, optim", [
    (1, OptimSpec(name="sgd", lr=0.05, weight_decay=1e-4, schedule="cosine", warmup_steps=2)),
    (2, OptimSpec(name="lars", lr=0.5, weight_decay=1e-4, schedule="step", milestones=(7, 14))),
    (1, OptimSpec(name="adamw", lr=1e-3, weight_decay=0.05, schedule="poly", warmup_steps=3)),
], ids=["sgd-cosine", "lars-step-accumulate", "adamw-poly"])
def test_resume_after_interruption_ends_with_identical_weights(tmp_path, accumulate, optim) -> None:
    data = Points()
    augmented = SeededAugmentation(data, jitter, seed=3)
    identity = {"run": "a"}

    straight = small_net()
    done = Trainer(straight, spec(accumulate=accumulate, optim=optim), torch.device("cpu"), tmp_path / "a", identity
                   ).fit(augmented, classify(data))
    assert [entry["epoch"] for entry in done.history] == [1, 2, 3] and done.steps == 18

    interrupted = small_net()
    with pytest.raises(Interrupted):  # 11 batches in: the last state is from an earlier step
        Trainer(interrupted, spec(accumulate=accumulate, optim=optim), torch.device("cpu"), tmp_path / "b", identity
                ).fit(augmented, interrupt_at(classify(data), 11 * accumulate))
    resumed_model = small_net()
    resumed = Trainer(resumed_model, spec(accumulate=accumulate, optim=optim), torch.device("cpu"), tmp_path / "b", identity,
                      resume=True).fit(augmented, classify(data))
    assert resumed.resumed_from_step == 10
    for (name, a), b in zip(straight.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.history == done.history
    assert (tmp_path / "b" / "tensorboard").is_dir()


def test_resume_refuses_a_state_of_another_run(tmp_path) -> None:
    data = Points(n=16)
    Trainer(small_net(), spec(epochs=1), torch.device("cpu"), tmp_path, {"lr": 0.05, "checkpoint": "abc"}
            ).fit(data, classify(data))
    with pytest.raises(SslBenchError, match=r"another run \(lr: 0.05 -> 0.1\)"):
        Trainer(small_net(), spec(epochs=1), torch.device("cpu"), tmp_path, {"lr": 0.1, "checkpoint": "abc"},
                resume=True).fit(data, classify(data))


def test_augmentation_is_fixed_by_seed_epoch_and_index_not_by_the_global_rng() -> None:
    augmented = SeededAugmentation(Points(n=4), jitter, seed=1)
    first = augmented[2][0]
    torch.manual_seed(123)
    assert torch.equal(augmented[2][0], first)
    augmented.set_epoch(1)
    assert not torch.equal(augmented[2][0], first)


def test_resumable_sampler_continues_the_epoch_order() -> None:
    data = Points(n=10)
    whole = ResumableSampler(data, seed=5)
    whole.set_position(2, 0)
    tail = ResumableSampler(data, seed=5)
    tail.set_position(2, 4)
    assert list(tail) == list(whole)[4:] and len(tail) == 6


def test_schedules_follow_their_formulas() -> None:
    warm = OptimSpec(lr=1.0, schedule="cosine", warmup_steps=10, warmup_start_factor=0.0)
    assert lr_factor(warm, 0, 110) == 0.0 and lr_factor(warm, 5, 110) == pytest.approx(0.5)
    assert lr_factor(warm, 60, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    step = OptimSpec(lr=1.0, schedule="step", milestones=(4, 8), gamma=0.1)
    assert [lr_factor(step, s, 12) for s in (3, 4, 8)] == pytest.approx([1.0, 0.1, 0.01])
    poly = OptimSpec(lr=1.0, schedule="poly", power=0.9)
    assert lr_factor(poly, 25, 100) == pytest.approx(0.75 ** 0.9)


def test_no_decay_on_batch_norm_and_biases() -> None:
    net = small_net()
    decayed, exempt = parameter_groups(net, 1e-4, no_decay_norm_and_bias=True)
    assert [p.shape for p in decayed["params"]] == [net[0].weight.shape, net[5].weight.shape]
    assert len(exempt["params"]) == 4 and exempt["weight_decay"] == 0.0
    assert len(parameter_groups(net, 1e-4, no_decay_norm_and_bias=False)) == 1


def test_lars_scales_each_layer_update_by_its_trust_ratio() -> None:
    weight = nn.Parameter(torch.tensor([3.0, 4.0]))
    bias = nn.Parameter(torch.tensor([1.0]))
    optimizer = LARS([{"params": [weight], "weight_decay": 0.0, "lars_exclude": False},
                      {"params": [bias], "weight_decay": 0.0, "lars_exclude": True}], lr=1.0, eta=0.01)
    weight.grad, bias.grad = torch.tensor([0.0, 2.0]), torch.tensor([0.5])
    optimizer.step()
    trust = 0.01 * 5.0 / 2.0  # eta * ||w|| / ||g||
    assert torch.allclose(weight.detach(), torch.tensor([3.0, 4.0 - trust * 2.0]))
    assert torch.allclose(bias.detach(), torch.tensor([0.5]))


def test_batch_that_does_not_split_is_a_user_error(tmp_path) -> None:
    data = Points(n=16)
    with pytest.raises(SslBenchError, match="batch_size 9 does not split"):
        Trainer(small_net(), spec(batch_size=9, accumulate=2), torch.device("cpu"), tmp_path, {}
                ).fit(data, classify(data))


def _train_on_rank(rank: int, world_size: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert distributed.init_distributed(init_method=f"file://{tmp}/rendezvous")
    try:
        data, net = Points(n=16), small_net(batch_norm=False).eval()
        result = ddp_job(net, data, Path(tmp) / "run")
        if rank == 0:
            torch.save({"weights": net.state_dict(), "loss": result.history[0]["loss"]}, Path(tmp) / "ddp.pt")
    finally:
        dist.destroy_process_group()


def ddp_job(net: nn.Module, data: Points, run_dir: Path):
    def step(model, batch):
        images, index = batch
        model.eval()  # no dropout: the comparison is exact up to summation order
        return nn.functional.cross_entropy(model(images), data.labels[index])
    plain = OptimSpec(name="sgd", lr=0.5, momentum=0.0, nesterov=False, schedule="constant")
    return Trainer(net, TrainSpec(optim=plain, batch_size=8, epochs=1, max_steps=1), torch.device("cpu"),
                   run_dir, {}).fit(data, step)


def test_two_gloo_processes_take_the_same_step_as_one(tmp_path) -> None:
    mp.spawn(_train_on_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    data, single = Points(n=16), small_net(batch_norm=False)
    before = {k: v.clone() for k, v in single.state_dict().items()}
    result = ddp_job(single, data, tmp_path / "single")
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    eps = torch.finfo(torch.float32).eps
    assert ddp["loss"] == pytest.approx(result.history[0]["loss"], rel=64 * eps)
    for name, weight in single.state_dict().items():
        moved = (weight - before[name]).abs().max().item()
        assert moved > 0, name  # the step really changed every weight
        torch.testing.assert_close(ddp["weights"][name], weight, rtol=0, atol=64 * eps * max(1.0, moved))
