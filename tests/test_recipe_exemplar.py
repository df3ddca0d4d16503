"""Exemplar-CNN: seeds fixed at build, labels the same every epoch and balanced, training only on seeds."""

from __future__ import annotations

import colorsys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.config import build_config
from benchmark.errors import SslBenchError
from benchmark.pretrain import PretrainOptions, pretrain
from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from benchmark.training.sampling import ResumableSampler, SeededAugmentation
from checkpoints.models import build_seeded
from checkpoints.recipes.exemplar import hsv_to_rgb, rgb_to_hsv


def build(dataset_size: int, **settings: str):
    recipe = RECIPES.get("exemplar")()
    config = build_config(recipe.Config, {"batch_size": "4", **settings}, owner="test")
    torch.manual_seed(0)
    return recipe.build(build_seeded("resnet18", seed=0), config, dataset_size)


def test_seeds_are_drawn_once_and_label_only_themselves() -> None:
    model = build(100, classes="20")
    seeds = model.training_indices()
    assert len(seeds) == 20 and torch.equal(seeds, seeds.unique()) and int(seeds.max()) < 100
    assert torch.equal(model.surrogate_labels(seeds), torch.arange(20))
    others = torch.tensor(sorted(set(range(100)) - set(seeds.tolist())))
    assert model.surrogate_labels(others).eq(-1).all()
    assert torch.equal(build(100, classes="20").seeds, seeds)  # same global seed, same seeds
    assert len(build(30, classes="8000").seeds) == 30  # capped at the dataset


def test_labels_are_consistent_across_epochs_and_balanced() -> None:
    model = build(100, classes="20")
    items = [(torch.zeros(1), i) for i in range(100)]
    data = SeededAugmentation(torch.utils.data.Subset(items, model.training_indices().tolist()), lambda x: x, seed=0)
    sampler = ResumableSampler(data, seed=0)
    label_of = {}
    for epoch in range(3):
        sampler.set_position(epoch, 0)
        order = [data[i][1] for i in sampler]
        labels = model.surrogate_labels(torch.tensor(order)).tolist()
        assert Counter(labels) == Counter(range(20))  # every class once per epoch
        for index, label in zip(order, labels):
            assert label_of.setdefault(index, label) == label


def test_images_that_are_not_seeds_are_left_out_of_the_loss() -> None:
    model = build(100, classes="20")
    seeds = model.training_indices()
    other = next(i for i in range(100) if i not in set(seeds.tolist()))
    views = (torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)),)
    model.eval()
    mixed = model(views, torch.tensor([seeds[0], other, seeds[1], other]))
    only = model((views[0][[0, 2]],), seeds[:2])
    torch.testing.assert_close(mixed, only)


def test_hsv_matches_colorsys() -> None:
    rgb = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rgb[:, 0, 0] = 0.5  # grey
    hsv = rgb_to_hsv(rgb)
    expected = np.array([colorsys.rgb_to_hsv(*rgb[:, i, j].tolist()) for i in range(5) for j in range(7)])
    np.testing.assert_allclose(hsv.reshape(3, -1).T.numpy(), expected, atol=1e-12)
    torch.testing.assert_close(hsv_to_rgb(hsv), rgb, rtol=0, atol=1e-12)


def test_augmentation_follows_the_seed() -> None:
    recipe = RECIPES.get("exemplar")()
    config = build_config(recipe.Config, {"samples": "3"}, owner="test")

    class Split:
        train_split = "train"

        def open_split(self, split, transform):
            return [(Image.new("RGB", (28, 28), (40 * i, 90, 200 - 30 * i)), i) for i in range(6)]

    views = recipe.views(config, InputSpec(32, (0.5,) * 3, (0.25,) * 3), Split())
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (28, 28, 3), dtype=np.uint8))
    torch.manual_seed(4)
    first = views(image)
    torch.manual_seed(4)
    again = views(image)
    assert len(first) == 3 and first[0].shape == (3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and not torch.equal(first[0], first[1])


def test_pretrain_trains_on_the_seeds_only(tmp_path) -> None:
    options = PretrainOptions(recipe="exemplar", out=tmp_path, arch="resnet18", epochs=1, limit=64, workers=0,
                              overrides={"classes": "16", "batch_size": "8", "samples": "1"})
    checkpoint = torch.load(pretrain(options), weights_only=True)
    assert checkpoint["ssl_bench"]["steps"] == 2  # 16 seeds, batch 8
    assert checkpoint["heads"]["seeds"].shape == (16,) and checkpoint["heads"]["classifier.weight"].shape[0] == 16
    assert not any(key.startswith("classifier") for key in checkpoint["state_dict"])


def test_fewer_seeds_than_a_batch_is_a_user_error() -> None:
    with pytest.raises(SslBenchError, match="16 surrogate classes"):
        build(16, batch_size="32")
