"""Pretraining sees the evaluation's frame (Fashion-MNIST padded to 32x32), and max_steps bounds the schedule."""

from __future__ import annotations

import pytest
import torch
from torchvision import transforms

import benchmark.pretrain as pretrain_module
from benchmark.data.fashion_mnist import FashionMnist
from benchmark.errors import SslBenchError
from benchmark.pretrain import PretrainOptions, pretrain
from benchmark.protocol import InputSpec


class _Captured(Exception):
    pass


def _captured_views(recipe: str, overrides: dict[str, str], monkeypatch, tmp_path) -> dict:
    """The framed dataset and the views transform pretrain() hands to SeededAugmentation (training not started)."""
    seen = {}

    def capture(dataset, transform, seed):
        seen.update(dataset=dataset, transform=transform)
        raise _Captured

    monkeypatch.setattr(pretrain_module, "SeededAugmentation", capture)
    with pytest.raises(_Captured):
        pretrain(PretrainOptions(recipe=recipe, out=tmp_path, arch="resnet18", limit=32, workers=0, batch_size=16,
                                 overrides=overrides))
    return seen


@pytest.mark.parametrize("recipe", ["simclr", "moco"])
def test_views_at_full_scale_are_the_evaluation_image(recipe: str, monkeypatch, tmp_path) -> None:
    """With crops of the whole frame and no colour change, a view is what kNN/linear see (up to a flip).

    Before the fix the views were cut from the bare 28x28 image, so at scale 1
    the garment filled 32x32 in pretraining but 28x28 inside a 2-pixel black
    border in the evaluation.
    """
    seen = _captured_views(recipe, {"crop_min_scale": "1.0", "color_strength": "0"}, monkeypatch, tmp_path)
    data = FashionMnist(None, limit=32)
    spec = InputSpec(32, *data.normalization)
    expected = spec.eval_transform(data)(data.open_split("train", None)[3][0])
    framed, index = seen["dataset"][3]
    assert index == 3 and framed.size == (32, 32)
    torch.manual_seed(0)
    for view in seen["transform"](framed):
        assert view.shape == expected.shape == (3, 32, 32)
        assert torch.allclose(view, expected) or torch.allclose(view, expected.flip(-1))


def test_frame_is_the_pad_only_at_32() -> None:
    data = FashionMnist(None, limit=10)
    image = data.open_split("train", None)[0][0]
    assert data.frame_transform(32)(image).size == (32, 32)
    assert data.frame_transform(28) is None


def test_max_steps_sets_the_schedule_length(tmp_path) -> None:
    path = pretrain(PretrainOptions(recipe="simclr", out=tmp_path, arch="resnet18", limit=32, workers=0, batch_size=16,
                                    epochs=100, max_steps=3, overrides={"warmup_epochs": "0", "optimizer": "sgd"}))
    meta = torch.load(path, weights_only=True)["ssl_bench"]
    assert meta["steps"] == 3 and meta["epoch"] == 2  # 2 steps per epoch: the second epoch stops after one step
    assert meta["training"]["spec"]["max_steps"] == 3


def test_view_size_resizes_the_whole_frame(monkeypatch, tmp_path) -> None:
    """view_size=16: a whole-frame view is the evaluation's 32x32 frame resized to 16x16 (the frame is unchanged)."""
    seen = _captured_views("simclr", {"crop_min_scale": "1.0", "color_strength": "0", "view_size": "16"},
                           monkeypatch, tmp_path)
    data = FashionMnist(None, limit=32)
    framed, _ = seen["dataset"][3]
    assert framed.size == (32, 32)
    expected = transforms.Compose([transforms.Resize(16), transforms.ToTensor(),
                                   transforms.Normalize(*data.normalization)])(framed)
    torch.manual_seed(0)
    for view in seen["transform"](framed):
        assert view.shape == expected.shape == (3, 16, 16)
        assert torch.allclose(view, expected, atol=1e-6) or torch.allclose(view, expected.flip(-1), atol=1e-6)


def test_view_size_must_be_a_non_negative_integer(tmp_path) -> None:
    with pytest.raises(SslBenchError, match="view_size: expected an integer >= 0"):
        pretrain(PretrainOptions(recipe="simclr", out=tmp_path, arch="resnet18", limit=32, workers=0, batch_size=16,
                                 overrides={"view_size": "-1"}))
