"""Every registered recipe: learns on Fashion-MNIST, resumes to identical weights, writes a checkpoint `run` reads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmark.config import build_config
from benchmark.data.fashion_mnist import FashionMnist
from benchmark.errors import SslBenchError
from benchmark.pretrain import PretrainOptions, pretrain
from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from checkpoints.formats import load_checkpoint
from checkpoints.models import build_seeded
from checkpoints.recipes.base import Recipe, RecipeConfig

ARCH = "resnet18"  # the ImageNet stem: cheap at Fashion-MNIST's 32 px
SMALL = {"batch_size": 32, "warmup_epochs": 0, "optimizer": "sgd", "lr": 0.4, "weight_decay": 0.0}


def small_settings(name: str) -> dict:
    """CPU-sized settings: the recipe's own small-scale overrides (if it has them) over SMALL."""
    fields = {f.name for f in dataclasses.fields(RECIPES.get(name).Config)}
    small = {**SMALL, **getattr(RECIPES.get(name), "test_settings", {})}
    return {key: value for key, value in small.items() if key in fields}


@pytest.mark.parametrize("name", RECIPES.names())
def test_recipe_interface(name: str) -> None:
    cls = RECIPES.get(name)
    assert issubclass(cls, Recipe) and cls.name == name and cls.paper
    assert (cls.__doc__ or "").strip(), "one-line docstring: shown by `ssl-bench list recipes`"
    assert issubclass(cls.Config, RecipeConfig) and cls.Config.__dataclass_params__.frozen
    cls.Config()


@pytest.mark.parametrize("name", RECIPES.names())
def test_steps_on_one_batch_lower_the_loss(name: str) -> None:
    recipe = RECIPES.get(name)()
    config = build_config(recipe.Config, small_settings(name), owner=name)
    data = FashionMnist(None, limit=32)
    torch.manual_seed(0)
    model = recipe.build(build_seeded(ARCH, seed=0), config, dataset_size=32)
    views = recipe.views(config, InputSpec(32, *data.normalization), data)
    images = data.open_split("train", None)
    batch = [torch.stack(parts) for parts in zip(*[views(images[i][0]) for i in range(32)])]
    index = torch.arange(32)
    model.on_epoch_start(0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)

    def loss() -> torch.Tensor:
        out = model(tuple(batch), index)
        return out[0] if isinstance(out, tuple) else out

    with torch.no_grad():
        before = float(loss())
    for _ in range(8):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    with torch.no_grad():
        after = float(loss())
    assert after < before, (before, after)


class Interrupted(Exception):
    pass


def stop_after(batches: int):
    count = {"n": 0}

    def progress(iterable, **kwargs):
        for item in iterable:
            count["n"] += 1
            if count["n"] > batches:
                raise Interrupted
            yield item
    return progress


VARIANTS = {"context_encoder": [{"adversarial": "true", "discriminator_width": "8"}]}  # options adding heads
RESUME_CASES = [(name, {}) for name in RECIPES.names()] + [
    (name, extra) for name, extras in VARIANTS.items() for extra in extras]


@pytest.mark.parametrize(("name", "extra"), RESUME_CASES, ids=[
    "-".join([name, *(f"{k}={v}" for k, v in extra.items())]) for name, extra in RESUME_CASES])
def test_resume_after_interruption_writes_identical_weights(name: str, extra: dict, tmp_path) -> None:
    settings = {**{key: str(value) for key, value in small_settings(name).items()}, **extra}
    options = dict(recipe=name, dataset="fashion_mnist", arch=ARCH, epochs=2, limit=128,
                   overrides={**settings, "save_every": "2"}, workers=0)
    straight = pretrain(PretrainOptions(out=tmp_path / "a", **options))
    with pytest.raises(Interrupted):
        pretrain(PretrainOptions(out=tmp_path / "b", **options), progress_factory=stop_after(7))
    resumed = pretrain(PretrainOptions(out=tmp_path / "b", resume=True, **options))
    a, b = (torch.load(path, weights_only=True) for path in (straight, resumed))
    assert a["ssl_bench"]["training"]["resumed_from_step"] is None
    assert b["ssl_bench"]["training"]["resumed_from_step"] == 6
    for part in ("state_dict", "heads"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    assert a["ssl_bench"]["training"]["history"] == b["ssl_bench"]["training"]["history"]
    loaded = load_checkpoint(str(resumed))
    assert loaded.describe()["format"] == "native" and loaded.describe()["arch"] == ARCH
    assert loaded.describe()["meta"]["recipe"] == name


def test_resume_refuses_a_state_of_another_recipe_or_arch(tmp_path) -> None:
    options = dict(dataset="fashion_mnist", epochs=1, limit=64, workers=0, out=tmp_path,
                   overrides={"batch_size": "32", "save_every": "1"})
    with pytest.raises(Interrupted):
        pretrain(PretrainOptions(recipe="simclr", arch=ARCH, **options), progress_factory=stop_after(1))
    with pytest.raises(SslBenchError, match=r"another run \(arch: 'resnet18' -> 'resnet18_cifar'"):
        pretrain(PretrainOptions(recipe="simclr", arch="resnet18_cifar", resume=True, **options))
