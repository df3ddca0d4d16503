"""Feature extraction: pooling, float64 reference values, the disk cache, worker errors."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import benchmark.features
from benchmark.data.base import ImageDataset
from benchmark.errors import SslBenchError
from benchmark.features import FeatureExtractor, PoolSpec, cache_key, check_features, pooling_for
from checkpoints.models import Backbone, Tap

ORDER = ("conv1", "res2", "res3", "res5avg")


class TinyNet(Backbone):
    """Three strided convs (one with BatchNorm) and a global average; counts forwards and the taps asked for."""

    arch = "tiny"
    taps = (Tap("conv1", 4, 2), Tap("res2", 256, 4), Tap("res3", 1024, 8), Tap("res5avg", 1024, 0))
    default_taps = ORDER
    input_size = 32

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(4, 256, 3, 2, 1), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(256, 1024, 3, 2, 1), nn.ReLU())
        self.requested: list[tuple[str, ...]] = []
        self.deepest: list[str] = []

    def forward_taps(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        self.requested.append(tuple(names))
        depth = max(ORDER.index(n) for n in names)
        self.deepest.append(ORDER[depth])
        maps = {"conv1": self.stem(x)}
        if depth >= 1:
            maps["res2"] = self.layer2(maps["conv1"])
        if depth >= 2:
            maps["res3"] = self.layer3(maps["res2"])
        if depth >= 3:
            maps["res5avg"] = maps["res3"].mean((2, 3))
        return {n: maps[n] for n in names}


def tiny_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        net.stem[1].running_mean.uniform_(-0.5, 0.5)
        net.stem[1].running_var.uniform_(0.5, 2.0)
    return net


class ImageSplit(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, transform: Any, fail_at: int | None) -> None:
        self.images, self.transform, self.fail_at = images, transform, fail_at

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if i == self.fail_at:
            raise SslBenchError(f"image {i} of 'tiny' is corrupt; delete it or run ssl-bench data check")
        return self.transform(self.images[i]), i


class TinyImages(ImageDataset):
    """Random images held in memory, the same for every split."""

    name = "tiny"
    task = "multiclass"
    splits = ("train", "test")
    train_split, test_split = "train", "test"

    def __init__(self, n: int = 10, size: int = 32, seed: int = 0, fail_at: int | None = None,
                 limit: int | None = None) -> None:
        super().__init__(None, limit)
        self.images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
        self.fail_at = fail_at

    @property
    def classes(self) -> list[str]:
        return ["a", "b"]

    def ids(self, split: str) -> list[str]:
        return [f"{split}-{i:03d}" for i in range(len(self.images))]

    def labels(self, split: str) -> np.ndarray:
        return np.arange(len(self.images), dtype=np.int64) % 2

    def open_split(self, split: str, transform: Any) -> torch.utils.data.Dataset:
        return ImageSplit(self.images, transform, self.fail_at)

    def digest(self) -> str:
        return hashlib.sha256(self.images.numpy().tobytes()).hexdigest()


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def extractor(net: Backbone, cache_dir: Path | None = None, **kwargs: Any) -> FeatureExtractor:
    return FeatureExtractor(net, "ckpt-sha", torch.device("cpu"), cache_dir, batch_size=4, **kwargs)


def avg_pool_reference(x: np.ndarray, kernel: int, stride: int, padding: int) -> np.ndarray:
    """Zero-padded average pooling, padding counted in the divisor (torch's default), in float64."""
    c, h, w = x.shape
    padded = np.zeros((c, h + 2 * padding, w + 2 * padding))
    padded[:, padding:padding + h, padding:padding + w] = x
    out_h, out_w = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    out = np.empty((c, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            out[:, i, j] = padded[:, i * stride:i * stride + kernel, j * stride:j * stride + kernel].mean((1, 2))
    return out


def adaptive_pool_reference(x: np.ndarray, grid: int) -> np.ndarray:
    """Bins [floor(i*H/g), ceil((i+1)*H/g)) per output cell, in float64."""
    c, h, w = x.shape
    out = np.empty((c, grid, grid))
    for i in range(grid):
        for j in range(grid):
            rows = slice(i * h // grid, math.ceil((i + 1) * h / grid))
            cols = slice(j * w // grid, math.ceil((j + 1) * w / grid))
            out[:, i, j] = x[:, rows, cols].mean((1, 2))
    return out


RESNET50_224 = {"conv1": (64, 112, 9216), "res2": (256, 56, 9216), "res3": (512, 28, 8192),
                "res4": (1024, 14, 9216), "res5": (2048, 7, 8192)}
ALEXNET_227 = {"conv1": (96, 56, 9600), "conv2": (256, 27, 9216), "conv3": (384, 13, 9600),
               "conv4": (384, 13, 9600), "conv5": (256, 13, 9216)}
STRIDES = {"conv1": 2, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


def test_fair_pooling_gives_the_dims_of_the_table() -> None:
    for tap, (channels, side, dims) in RESNET50_224.items():
        spec = pooling_for("resnet50", 224, Tap(tap, channels, STRIDES[tap]))
        assert spec.kind == "avg"
        assert spec.apply(torch.zeros(1, channels, side, side)).shape == (1, dims)
    for tap, (channels, side, dims) in ALEXNET_227.items():
        spec = pooling_for("alexnet", 227, Tap(tap, channels, 4))
        assert spec.kind == "avg" and spec.padding == 0
        assert spec.apply(torch.zeros(1, channels, side, side)).shape == (1, dims)
    assert pooling_for("resnet50", 224, Tap("conv1", 64, 2)).describe() == \
        "avg_pool2d(kernel=10, stride=10, padding=4)"
    assert pooling_for("resnet50", 224, Tap("res5avg", 2048, 0)) == PoolSpec("none")


def test_real_resnet50_pooled_dims() -> None:
    from benchmark.registry import ARCHS

    if "resnet50" not in ARCHS.names():
        pytest.skip("resnet50 is not registered yet")
    from checkpoints.models import build_backbone

    net = build_backbone("resnet50").eval()
    with torch.inference_mode():
        maps = net.forward_taps(torch.zeros(1, 3, 224, 224), list(RESNET50_224) + ["res5avg"])
    for tap, (_, _, dims) in RESNET50_224.items():
        assert pooling_for("resnet50", 224, net.tap(tap)).apply(maps[tap]).shape == (1, dims)
    assert pooling_for("resnet50", 224, net.tap("res5avg")).apply(maps["res5avg"]).shape == (1, 2048)


def test_adaptive_grid_elsewhere() -> None:
    grids = {"conv1": (64, 12), "res2": (64, 12), "res3": (128, 8), "res4": (256, 6), "res5": (512, 4)}
    for tap, (channels, grid) in grids.items():
        spec = pooling_for("resnet18", 224, Tap(tap, channels, STRIDES[tap]))
        assert spec == PoolSpec("adaptive", grid=grid)
        assert grid * grid * channels <= 9216
    assert pooling_for("resnet50", 160, Tap("res5", 2048, 32)) == PoolSpec("adaptive", grid=2)
    assert pooling_for("resnet18", 32, Tap("res5", 512, 32)).grid == 1  # a 1x1 map is not upsampled
    assert pooling_for("vit", 224, Tap("conv1", 20000, 2)).grid == 1


@pytest.mark.parametrize("kernel,stride,padding", [(10, 10, 4), (6, 1, 0), (13, 5, 0)])
def test_avg_pool_matches_float64_reference(kernel: int, stride: int, padding: int) -> None:
    x = np.random.default_rng(0).normal(size=(2, 3, 28, 28))
    got = PoolSpec("avg", kernel, stride, padding).apply(torch.from_numpy(x)).numpy()
    want = np.stack([avg_pool_reference(sample, kernel, stride, padding).ravel() for sample in x])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_extracted_features_match_float64_reference() -> None:
    net, data = tiny_net(), TinyImages(n=9, size=30)
    fs = extractor(net).extract(data, "train", ["res2", "conv1", "res5avg", "res3"], identity, "id")
    reference = tiny_net().double().eval()
    with torch.no_grad():
        maps = reference.forward_taps(data.images.double(), ORDER)
    conv1 = maps["conv1"].numpy()
    assert pooling_for("tiny", 30, net.tap("conv1")) == PoolSpec("adaptive", grid=15)  # 30/2 = 15: identity
    np.testing.assert_allclose(fs.features["conv1"], conv1.reshape(9, -1), rtol=1e-4, atol=1e-5)
    for tap, grid in {"res2": 6, "res3": 3}.items():  # 8x8 -> 6x6 and 4x4 -> 3x3: overlapping bins
        assert pooling_for("tiny", 30, net.tap(tap)) == PoolSpec("adaptive", grid=grid)
        want = np.stack([adaptive_pool_reference(m, grid).ravel() for m in maps[tap].numpy()])
        np.testing.assert_allclose(fs.features[tap], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fs.features["res5avg"], maps["res5avg"].numpy(), rtol=1e-4, atol=1e-5)
    assert all(a.dtype == np.float32 for a in fs.features.values())
    assert list(fs.features) == ["res2", "conv1", "res5avg", "res3"]
    assert fs.ids == data.ids("train") and np.array_equal(fs.labels, data.labels("train"))


def test_uneven_adaptive_bins_match_reference() -> None:
    x = np.random.default_rng(1).normal(size=(2, 5, 7, 7))
    got = PoolSpec("adaptive", grid=3).apply(torch.from_numpy(x)).numpy()
    want = np.stack([adaptive_pool_reference(sample, 3).ravel() for sample in x])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_one_forward_per_batch_for_all_taps_in_eval_mode() -> None:
    net = tiny_net().train()
    stats = net.stem[1].running_mean.clone()
    progress_calls: list[dict[str, Any]] = []

    def progress(iterable: Any, desc: str, total: int) -> Any:
        progress_calls.append({"desc": desc, "total": total})
        return iterable

    fs = extractor(net, progress=progress).extract(TinyImages(n=10), "test", ORDER, identity, "id")
    assert net.requested == [ORDER] * 3  # ceil(10 / 4) batches, every tap from the same forward
    assert net.training  # mode restored
    assert torch.equal(net.stem[1].running_mean, stats)  # BN ran in eval mode: statistics untouched
    assert progress_calls == [{"desc": "features test [conv1, res2, res3, res5avg]", "total": 3}]
    assert {tap: a.shape for tap, a in fs.features.items()} == {
        "conv1": (10, 4 * 16 * 16), "res2": (10, 256 * 6 * 6), "res3": (10, 1024 * 3 * 3), "res5avg": (10, 1024)}
    assert len(fs) == 10


def test_cache_hit_runs_no_forward(tmp_path) -> None:
    data = TinyImages()
    first = extractor(tiny_net(), tmp_path).extract(data, "train", ORDER, identity, "id")
    net = tiny_net()
    second = extractor(net, tmp_path).extract(data, "train", ORDER, identity, "id")
    assert net.requested == []
    for tap in ORDER:
        np.testing.assert_array_equal(second.features[tap], first.features[tap])
    assert len(list(tmp_path.glob("*.npy"))) == len(ORDER)


def test_partial_cache_computes_only_missing_taps(tmp_path) -> None:
    data = TinyImages()
    cached = extractor(tiny_net(), tmp_path).extract(data, "train", ["res3"], identity, "id")
    net = tiny_net()
    fs = extractor(net, tmp_path).extract(data, "train", ["conv1", "res3"], identity, "id")
    assert set(net.requested) == {("conv1",)}
    assert set(net.deepest) == {"conv1"}  # the forward stopped at the deepest missing tap
    np.testing.assert_array_equal(fs.features["res3"], cached.features["res3"])
    fresh = extractor(tiny_net(), None).extract(data, "train", ["conv1"], identity, "id")
    np.testing.assert_allclose(fs.features["conv1"], fresh.features["conv1"], rtol=1e-6)


def test_cache_key_covers_every_input() -> None:
    base = dict(checkpoint_digest="c", dataset_digest="d", split="train", tap="res5", transform_id="t",
                pooling="none", limit=None)
    changed = [dict(base, checkpoint_digest="c2"), dict(base, dataset_digest="d2"), dict(base, split="test"),
               dict(base, tap="res4"), dict(base, transform_id="t2"), dict(base, pooling="avg"),
               dict(base, limit=10)]
    keys = {cache_key(**kwargs) for kwargs in [base, *changed]}
    assert len(keys) == len(changed) + 1
    assert cache_key(**base) == cache_key(**dict(base))
    assert all(len(k) == 64 for k in keys)


def test_changed_transform_checkpoint_or_data_recomputes(tmp_path) -> None:
    def forwards(digest: str = "ckpt-sha", transform_id: str = "id", data: ImageDataset | None = None) -> int:
        net = tiny_net()
        FeatureExtractor(net, digest, torch.device("cpu"), tmp_path, batch_size=4).extract(
            data or TinyImages(), "train", ["res2"], identity, transform_id)
        return len(net.requested)

    assert forwards() == 3
    assert forwards() == 0
    assert forwards(transform_id="other") == 3
    assert forwards(digest="other") == 3
    assert forwards(data=TinyImages(seed=1)) == 3
    assert forwards(data=TinyImages(limit=10)) == 3


def test_corrupt_cache_file_is_recomputed(tmp_path) -> None:
    data = TinyImages()
    good = extractor(tiny_net(), tmp_path).extract(data, "train", ["res2"], identity, "id")
    (path,) = tmp_path.glob("*.npy")
    path.write_bytes(b"\x93NUMPY garbage")
    net = tiny_net()
    again = extractor(net, tmp_path).extract(data, "train", ["res2"], identity, "id")
    assert len(net.requested) == 3
    np.testing.assert_array_equal(again.features["res2"], good.features["res2"])
    np.testing.assert_array_equal(np.load(path), good.features["res2"])


def test_cache_write_is_atomic(tmp_path, monkeypatch) -> None:
    data = TinyImages()
    extractor(tiny_net(), tmp_path / "ok").extract(data, "train", ["conv1", "res2"], identity, "id")
    assert sorted(p.suffix for p in (tmp_path / "ok").iterdir()) == [".npy", ".npy"]

    def interrupted_save(handle: Any, array: np.ndarray, **kwargs: Any) -> None:
        handle.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark.features.np, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        extractor(tiny_net(), tmp_path / "cut").extract(data, "train", ["res2"], identity, "id")
    assert list((tmp_path / "cut").iterdir()) == []


def test_check_features_errors() -> None:
    y = np.zeros(4)
    check_features(np.ones((4, 3), dtype=np.float32), y)
    bad = {"expected (N, D)": np.ones((4, 3, 2)), "4 rows but there are 5 labels": np.ones((4, 3)),
           "NaN/Inf for 1 of 4": np.array([[1.0], [np.inf], [0.0], [2.0]])}
    for message, X in bad.items():
        labels = np.zeros(5) if "5 labels" in message else y
        with pytest.raises(SslBenchError, match=re.escape(message)) as info:
            check_features(X, labels, tap="res4", split="test")
        assert "tap 'res4' on split 'test'" in str(info.value) and "\n" not in str(info.value)


def test_worker_error_reaches_caller_as_one_line() -> None:
    data = TinyImages(fail_at=6)
    with pytest.raises(SslBenchError) as info:
        extractor(tiny_net(), workers=1).extract(data, "train", ["conv1"], identity, "id")
    assert str(info.value) == "image 6 of 'tiny' is corrupt; delete it or run ssl-bench data check"


def test_empty_split_is_a_user_error() -> None:
    with pytest.raises(SslBenchError, match="split 'train' of dataset 'tiny' is empty"):
        extractor(tiny_net()).extract(TinyImages(n=0), "train", ["conv1"], identity, "id")


def test_real_resnet18_taps() -> None:
    from benchmark.registry import ARCHS

    if "resnet18" not in ARCHS.names():
        pytest.skip("resnet18 is not registered yet")
    from checkpoints.models import build_backbone

    torch.manual_seed(0)
    net = build_backbone("resnet18")
    taps = ["conv1", "res2", "res3", "res4", "res5", "res5avg"]
    fs = extractor(net).extract(TinyImages(n=5, size=64), "train", taps, identity, "id")
    dims = {tap: a.shape[1] for tap, a in fs.features.items()}
    assert dims == {"conv1": 64 * 144, "res2": 64 * 144, "res3": 128 * 64, "res4": 256 * 16,
                    "res5": 512 * 4, "res5avg": 512}
    res5 = fs.features["res5"].reshape(5, 512, 4)  # a 2x2 map, kept whole
    np.testing.assert_allclose(fs.features["res5avg"], res5.mean(2), rtol=1e-5, atol=1e-6)


def test_amp_defaults_and_bfloat16_autocast() -> None:
    cuda = FeatureExtractor(tiny_net(), "c", torch.device("cuda"), None)
    cpu = FeatureExtractor(tiny_net(), "c", torch.device("cpu"), None)
    assert (cuda.policy.dtype, cuda.policy.channels_last) == (torch.bfloat16, True)
    assert (cpu.policy.dtype, cpu.policy.channels_last) == (None, False)
    data = TinyImages(n=6)
    exact = extractor(tiny_net()).extract(data, "train", ["res3"], identity, "id").features["res3"]
    mixed = extractor(tiny_net(), amp=True).extract(data, "train", ["res3"], identity, "id").features["res3"]
    assert mixed.dtype == np.float32 and not np.array_equal(mixed, exact)  # autocast really ran
    np.testing.assert_allclose(mixed, exact, rtol=0.05, atol=0.02 * np.abs(exact).max())


def test_extract_rows_gives_the_full_extraction_rows_cached_per_image(tmp_path) -> None:
    """A subset by positions equals those rows of a full extraction (labels and ids too); a later subset
    sends only the images not cached yet through the network, and one fully cached sends none."""
    data, net, taps = TinyImages(n=13), tiny_net(), ["conv1", "res3", "res5avg"]
    full = extractor(net).extract(data, "train", taps, identity, "id")
    engine = extractor(net, tmp_path)
    for rows, forwards in (([11, 2, 7], 1), ([7, 5, 2, 12, 0, 9], 1), ([12, 2], 0)):
        before = len(net.requested)
        part = engine.extract_rows(data, "train", taps, identity, "id", rows)
        assert len(net.requested) - before == forwards  # batches of 4: only the uncached images
        assert part.ids == [full.ids[r] for r in rows]
        np.testing.assert_array_equal(part.labels, full.labels[rows])
        for tap in taps:
            assert part.features[tap].dtype == np.float32
            # the same images in other batches: equal up to float32 summation order (as a partial cache above)
            np.testing.assert_allclose(part.features[tap], full.features[tap][rows], rtol=1e-6, atol=1e-7)
    with pytest.raises(SslBenchError, match="positions in 0..12"):
        engine.extract_rows(data, "train", taps, identity, "id", [3, 13])
