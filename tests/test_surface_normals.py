"""surface_normals through the CLI on `ssl-bench make-data nyuv2` data, its network pieces, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.cli import main
from benchmark.data.nyuv2 import NyuV2
from checkpoints.models import build_backbone
from protocols.normals_metrics import NormalErrors
from protocols.surface_normals import JointAugment, NormalsNet, dilate

FAST = ("--set", "epochs=8", "--set", "batch_size=4", "--set", "head_channels=64")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nyuv2") / "data"
    assert main(["make-data", "nyuv2", "--out", str(root)]) == 0
    return root


def copy_root(nyu_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(nyu_root, tmp_path / "data"))


def run_args(root: Path, results: Path, *extra: str) -> list[str]:
    return ["run", "--checkpoint", "random:resnet18", "--protocol", "surface_normals", "--data-root", str(root),
            "--results", str(results), "--workers", "0", "--device", "cpu", *extra]


def best_constant(nyu: NyuV2, candidates: np.ndarray) -> dict[str, float]:
    """The best score any one constant normal reaches on the test set, per metric."""
    best: dict[str, float] = {}
    for c in candidates:
        with NormalErrors() as errors:
            for i in range(len(nyu.ids("test"))):
                gt, mask = nyu.targets("test", i)
                errors.add(np.broadcast_to(c, gt.shape).astype(np.float32), gt, mask)
            for name, value in errors.result().items():
                lower = name in ("mean", "median")
                best[name] = min(best.get(name, np.inf), value) if lower else max(best.get(name, -np.inf), value)
    return best


def test_cli_run_writes_a_record_and_beats_a_constant_normal(capsys, tmp_path, nyu_root, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SSL_BENCH_CACHE", str(cache))
    assert main(run_args(nyu_root, tmp_path / "results", *FAST, "--set", "save_predictions=true", "--json")) == 0
    record = json.loads(capsys.readouterr().out)
    metrics = record["metrics"]["network"]
    assert set(metrics) == {"mean", "median", "within_11.25", "within_22.5", "within_30"}
    declared = {spec["name"]: spec for spec in record["protocol"]["metrics"]}
    assert record["protocol"]["primary_metric"] == "median"
    assert declared["median"]["higher_is_better"] is False and declared["mean"]["higher_is_better"] is False
    assert declared["within_11.25"]["higher_is_better"] is True
    assert record["config"]["clusters"] == 40 and record["config"]["freeze_at"] == "res4"
    assert record["details"]["training"]["spec"]["optim"]["schedule"] == "poly"
    assert record["details"]["training"]["dilations"] == [1, 2, 4]
    assert len(list((cache / "features" / "normals_codebook").glob("*.npy"))) == 1

    # the saved predictions: one per test image, float32 unit vectors at the ground truth's size, and
    # scoring them independently gives the record's numbers
    nyu = NyuV2(nyu_root)
    folder = next((tmp_path / "results").glob("*/surface_normals-*.artifacts")) / "predictions"
    assert sorted(p.stem for p in folder.glob("*.npy")) == nyu.ids("test")
    with NormalErrors() as errors:
        for i, image_id in enumerate(nyu.ids("test")):
            pred = np.load(folder / f"{image_id}.npy")
            gt, mask = nyu.targets("test", i)
            assert pred.dtype == np.float32 and pred.shape == gt.shape
            np.testing.assert_allclose(np.linalg.norm(pred, axis=-1), 1, atol=1e-5)
            errors.add(pred, gt, mask)
        rescored = errors.result()
    for name, value in metrics.items():
        assert value == pytest.approx(rescored[name], abs=1e-6)

    # Mean error is the robust yardstick on these box rooms: walls, floor and ceiling are ~90 degrees apart, so
    # any constant normal is off by ~90 on most surfaces (best mean ~50); a network that tells the surfaces
    # apart by their shading cuts it well below. (Median and within_T of a constant depend on which surface
    # covers half of the test pixels, so they swing with the sample.)
    centres = np.array(record["details"]["codebook"]["centres"])
    train = np.concatenate([nyu.targets("train", i)[0][nyu.targets("train", i)[1]]
                            for i in range(len(nyu.ids("train")))])
    candidates = np.vstack([centres, train.mean(0) / np.linalg.norm(train.mean(0))])
    constant = best_constant(nyu, candidates)
    assert metrics["mean"] < constant["mean"] - 5, (metrics, constant)


class Interrupted(Exception):
    pass


def stop_training_after(batches: int):
    """A progress factory that interrupts training after `batches` batches over all epochs (other bars run through)."""
    seen = {"train": 0}

    def progress(iterable, desc="", **kwargs):
        for item in iterable:
            if desc.startswith("train"):
                seen["train"] += 1
                if seen["train"] > batches:
                    raise Interrupted
            yield item
    return progress


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, nyu_root, monkeypatch):
    from benchmark.runner import RunOptions, run

    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "default"))
    options = dict(checkpoint="random:resnet18", protocol="surface_normals", data_root=nyu_root, device="cpu",
                   overrides={"epochs": "1", "batch_size": "4", "head_channels": "16", "save_every": "2",
                              "clusters": "8", "codebook_samples": "4000"})
    straight, _ = run(RunOptions(results_dir=tmp_path / "a", cache_dir=tmp_path / "cache", **options))
    with pytest.raises(Interrupted):
        run(RunOptions(results_dir=tmp_path / "b", cache_dir=None, **options), progress_factory=stop_training_after(3))
    resumed, _ = run(RunOptions(results_dir=tmp_path / "b", cache_dir=None, resume=True, **options))
    assert straight["details"]["training"]["resumed_from_step"] is None
    assert resumed["details"]["training"]["resumed_from_step"] == 2
    assert resumed["metrics"] == straight["metrics"]
    assert resumed["details"]["training"]["history"] == straight["details"]["training"]["history"]
    # the codebook lives where --cache says, or beside the record with --no-cache; never in the default cache
    codebook = straight["details"]["codebook"]["file"]
    assert [p.name for p in (tmp_path / "cache" / "normals_codebook").iterdir()] == [codebook]
    assert [p.name for p in (tmp_path / "b").rglob("normals_codebook/*.npy")] == [codebook]
    assert not (tmp_path / "default" / "features").exists()


def test_cosine_head_runs_with_a_frozen_trunk(capsys, tmp_path, nyu_root):
    assert main(run_args(nyu_root, tmp_path / "results", "--set", "epochs=1", "--set", "batch_size=8",
                         "--set", "head=cosine", "--set", "freeze_at=res5", "--set", "head_channels=32",
                         "--json")) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["details"]["codebook"] is None
    assert 0 <= record["metrics"]["network"]["median"] <= 180


def test_dilation_gives_output_stride_8_and_freezing_leaves_res5_and_head() -> None:
    trunk = build_backbone("resnet18")
    assert dilate(trunk, 8) == [1, 2, 4]
    assert trunk.forward_taps(torch.zeros(1, 3, 64, 48), ["res5"])["res5"].shape[-2:] == (8, 6)
    cifar = build_backbone("resnet18_cifar")
    assert dilate(cifar, 8) == [1, 1, 1]  # already stride 8
    net = NormalsNet(trunk, "res4", 40, 16).train()
    trainable = {name.split(".")[0] + "." + name.split(".")[1] for name, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"trunk.layer4", "head.branches", "head.fuse", "head.classifier"}
    assert not net.trunk.layer3.training and net.trunk.layer4.training
    everything = NormalsNet(build_backbone("resnet18"), "none", 3, 16)
    assert all(p.requires_grad for p in everything.parameters())


def test_flip_mirrors_image_normals_and_mask_together() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8))
    normals = rng.normal(size=(6, 8, 3)).astype(np.float32)
    mask = rng.random((6, 8)) < 0.5
    augment = JointAugment((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), crop_size=None)
    outcomes = set()
    for seed in range(8):
        torch.manual_seed(seed)
        img, n, m = augment((image, normals, mask))
        base = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        flipped = not torch.allclose(img, base)
        expected = torch.from_numpy(normals).permute(2, 0, 1)
        if flipped:
            expected = expected.flip(-1) * torch.tensor([-1.0, 1, 1])[:, None, None]
            assert torch.allclose(img, base.flip(-1)) and torch.equal(m, torch.from_numpy(mask).flip(-1))
        assert torch.allclose(n, expected)
        outcomes.add(flipped)
    assert outcomes == {True, False}


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[ssl-bench]")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _resize_image(root: Path) -> tuple[str, ...]:
    first = (root / "splits/train.txt").read_text().split()[0]
    Image.new("RGB", (20, 10)).save(root / "images" / f"{first}.png")
    return first, "different sizes"


def _non_unit_normals(root: Path) -> tuple[str, ...]:
    first = (root / "splits/train.txt").read_text().split()[0]
    Image.new("RGB", (64, 48), (128, 128, 128)).save(root / "normals" / f"{first}.png")
    return f"normals/{first}.png", "unit vectors"


def _empty_mask(root: Path) -> tuple[str, ...]:
    first = (root / "splits/train.txt").read_text().split()[0]
    Image.new("L", (64, 48), 0).save(root / "masks" / f"{first}.png")
    return f"masks/{first}.png", "no valid pixel"


def _unknown_id(root: Path) -> tuple[str, ...]:
    with open(root / "splits/test.txt", "a") as lists:
        lists.write("9999\n")
    return "9999", "does not exist"


@pytest.mark.parametrize("spoil", [_resize_image, _non_unit_normals, _empty_mask, _unknown_id])
def test_bad_data_is_one_line(capsys, tmp_path, nyu_root, spoil):
    root = copy_root(nyu_root, tmp_path)
    fragments = spoil(root)
    code = main(run_args(root, tmp_path / "results", *FAST))
    assert_user_error(code, capsys.readouterr().err, *fragments)


@pytest.mark.parametrize("setting, fragment", [("freeze_at=res9", "freeze_at"), ("head=svm", "head"),
                                               ("clusters=1", "clusters"), ("lr=-1", "lr")])
def test_bad_settings_are_one_line(capsys, tmp_path, nyu_root, setting, fragment):
    code = main(run_args(nyu_root, tmp_path / "results", "--set", setting))
    assert_user_error(code, capsys.readouterr().err, fragment)


def test_non_resnet_checkpoint_is_refused(capsys, tmp_path, nyu_root):
    code = main(["run", "--checkpoint", "random:alexnet", "--protocol", "surface_normals", "--data-root",
                 str(nyu_root), "--results", str(tmp_path), "--workers", "0", "--device", "cpu"])
    assert_user_error(code, capsys.readouterr().err, "ResNet")
