"""ContrastiveCrop: heat-map boxes, crops centred in them, boxes reaching the data pipeline by index, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.data.fashion_mnist import FashionMnist
from benchmark.pretrain import PretrainOptions, pretrain
from benchmark.protocol import InputSpec
from benchmark.training import SeededAugmentation
from checkpoints.models import Backbone, Tap
from checkpoints.recipes import augment
from checkpoints.recipes.augment import (BoxTable, ContrastiveCrop, ContrastiveCropBoxes, Views, bind_boxes,
                                         contrastive_crop_params, heat_boxes, simclr_augmentation)
from test_recipes import Interrupted, stop_after


class BrightnessTrunk(Backbone):
    """A stand-in trunk whose last map is the image's mean brightness over 8x8 cells: it 'sees' the garment."""

    arch = "brightness"
    taps = (Tap("res5", 3, 8), Tap("res5avg", 3, 0))
    default_taps = ("res5",)

    def stages(self):
        return (lambda x: F.avg_pool2d(x, 8), lambda x: x.mean((2, 3)))


def boxes_by_search(heat: np.ndarray, threshold: float) -> list[float]:
    """The smallest box holding every pixel above threshold, found pixel by pixel."""
    height, width = heat.shape
    above = [(y, x) for y in range(height) for x in range(width) if heat[y, x] > threshold]
    if not above:
        return [0.0, 0.0, 1.0, 1.0]
    ys, xs = [y for y, _ in above], [x for _, x in above]
    return [min(ys) / height, min(xs) / width, (max(ys) + 1) / height, (max(xs) + 1) / width]


def test_heat_boxes_hold_every_pixel_above_the_threshold() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = 0.05 * torch.rand(5, 3, 6, 6, generator=generator)
    for i, (y, x) in enumerate([(0, 0), (2, 3), (5, 1), (3, 3)]):
        maps[i, :, y, x] += 1.0  # one hot cell over faint noise
    maps[4] = 1.0  # flat: the whole image
    got = heat_boxes(maps, (32, 32), threshold=0.1)
    heat = maps.sum(1, keepdim=True)  # the paper's code: channel sum, min-max, bilinear
    low, high = heat.amin((1, 2, 3), keepdim=True), heat.amax((1, 2, 3), keepdim=True)
    heat = F.interpolate((heat - low) / (high - low).clamp_min(1e-12), size=(32, 32), mode="bilinear")[:, 0]
    for i in range(5):
        assert got[i].tolist() == pytest.approx(boxes_by_search(heat[i].numpy(), 0.1))
    assert got[4].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert ((got[:4, 2] - got[:4, 0]) * (got[:4, 3] - got[:4, 1]) < 0.5).all()


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.02, 0.1)])
def test_crop_centres_fall_in_the_box_unless_the_image_edge_stops_them(scale) -> None:
    torch.manual_seed(0)
    height, width = 40, 60
    for _ in range(400):
        corners = torch.rand(2, 2).sort(dim=0).values  # rows: start, end; columns: y, x
        box = [float(corners[0, 0]), float(corners[0, 1]), float(corners[1, 0]), float(corners[1, 1])]
        top, left, h, w = contrastive_crop_params(height, width, box, scale, (3 / 4, 4 / 3), alpha=0.6)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        for start, centre, extent, side, low, high in ((top, top + h // 2, h, height, box[0], box[2]),
                                                       (left, left + w // 2, w, width, box[1], box[3])):
            at_edge = start == 0 or start + extent == side
            assert at_edge or side * low - 1 <= centre <= side * high + 1, (box, top, left, h, w)


def test_crop_centres_favour_the_box_edges_with_alpha_below_one() -> None:
    torch.manual_seed(0)
    box = [0.0, 0.0, 1.0, 1.0]
    tops = np.array([contrastive_crop_params(100, 100, box, (0.04, 0.04), (1.0, 1.0), alpha=0.6)[0]
                     for _ in range(2000)])
    # 20 px crops: top in [0, 80]; Beta(0.6, 0.6) puts 33.8% within 8 px of either end (uniform: 19.8%)
    outer = np.mean((tops < 8) | (tops > 72))
    assert 0.29 < outer < 0.39


def fashion(n: int) -> tuple[FashionMnist, InputSpec]:
    data = FashionMnist(None, limit=n)
    return data, InputSpec(32, *data.normalization)


def test_boxes_update_on_schedule_and_reach_the_table() -> None:
    data, spec = fashion(8)
    boxes = bind_boxes(ContrastiveCropBoxes(8, epochs=10), "contrastive", spec, data)
    assert [epoch for epoch in range(12) if boxes.due(epoch)] == [2, 4, 6, 8]  # every fifth of training
    trunk = BrightnessTrunk()
    boxes.on_epoch_start(1, trunk)
    assert int(boxes.updates) == 0 and not bool(boxes.table.ready)
    boxes.on_epoch_start(2, trunk)
    assert int(boxes.updates) == 1 and bool(boxes.table.ready)
    images = data.open_split("train", spec.eval_transform(data))
    maps = F.avg_pool2d(torch.stack([images[i][0] for i in range(8)]), 8)
    assert torch.equal(boxes.boxes, heat_boxes(maps, (32, 32), 0.1))
    assert torch.equal(boxes.table.boxes, boxes.boxes)
    assert ((boxes.boxes[:, 2] - boxes.boxes[:, 0]) * (boxes.boxes[:, 3] - boxes.boxes[:, 1]) < 1).any()
    restored = ContrastiveCropBoxes(8, epochs=10)
    restored.load_state_dict(boxes.state_dict())
    assert torch.equal(restored.table.boxes, boxes.boxes) and bool(restored.table.ready)


def test_the_box_of_each_image_reaches_its_crop_through_seeded_augmentation() -> None:
    data, spec = fashion(4)
    boxes = ContrastiveCropBoxes(4, epochs=5)
    views = Views(simclr_augmentation(spec, boxes=boxes), simclr_augmentation(spec))
    assert views.takes_index
    split = data.open_split("train", None)
    items = SeededAugmentation(split, views, seed=0)
    subset = SeededAugmentation(torch.utils.data.Subset(split, [2, 0]), views, seed=0)  # items keep their index
    boxes.table.ready.fill_(True)  # as after a localisation
    before = [items[i][0] for i in range(4)] + [subset[i][0] for i in range(2)]
    assert all(torch.equal(a, b) for x, y in zip(before, [items[i][0] for i in range(4)]) for a, b in zip(x, y))
    boxes.table.boxes[2] = torch.tensor([0.8, 0.8, 1.0, 1.0])  # image 2 alone gets a small box in a corner
    after = [items[i][0] for i in range(4)] + [subset[i][0] for i in range(2)]
    assert [torch.equal(x[0], y[0]) for x, y in zip(before, after)] == [True, True, False, True, False, True]


def test_the_crop_refuses_to_run_without_an_index() -> None:
    data, spec = fashion(1)
    crop = ContrastiveCrop(BoxTable(1), 32)
    with pytest.raises(ValueError, match="index"):
        Views(crop)(data.open_split("train", None)[0][0])


def weight_dependent_boxes(maps: torch.Tensor, size: tuple[int, int], threshold: float) -> torch.Tensor:
    """Boxes that move with the trunk's weights: resnet18's res5 is 1x1 at 32 px, where heat maps are flat."""
    fraction = torch.sigmoid(maps.float().flatten(1).mean(1) * 100)
    zeros = torch.zeros_like(fraction)
    return torch.stack([zeros, zeros, 0.3 + 0.7 * fraction, 1 - 0.7 * fraction], dim=1)


def test_simclr_with_contrastive_crop_resumes_to_identical_weights_and_boxes(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(augment, "heat_boxes", weight_dependent_boxes)
    options = dict(recipe="simclr", dataset="fashion_mnist", arch="resnet18", epochs=2, limit=32, workers=0,
                   overrides={"batch_size": "8", "optimizer": "sgd", "lr": "0.4", "warmup_epochs": "0",
                              "weight_decay": "0", "save_every": "2", "crop": "contrastive"})
    straight = pretrain(PretrainOptions(out=tmp_path / "a", **options))
    with pytest.raises(Interrupted):
        pretrain(PretrainOptions(out=tmp_path / "b", **options), progress_factory=stop_after(7))
    resumed = pretrain(PretrainOptions(out=tmp_path / "b", resume=True, **options))
    a, b = (torch.load(path, weights_only=True) for path in (straight, resumed))
    assert b["ssl_bench"]["training"]["resumed_from_step"] == 6  # mid epoch 2: its localisation is not re-run
    assert int(a["heads"]["crop_boxes.updates"]) == 1  # localised once, at the start of epoch 2
    assert (a["heads"]["crop_boxes.boxes"] != torch.tensor([0.0, 0.0, 1.0, 1.0])).any()
    for part in ("state_dict", "heads"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
