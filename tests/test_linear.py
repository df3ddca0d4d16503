"""linear, places205_linear and finetune end to end through the CLI on Fashion-MNIST and generated folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from benchmark.cli import main
from benchmark.data.fashion_mnist import FashionMnist
from benchmark.features import FeatureExtractor
from benchmark.protocol import InputSpec
from benchmark.training import OptimSpec, Trainer, TrainSpec
from checkpoints.formats import load_checkpoint
from checkpoints.models import build_seeded

LIMIT = "600"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def user_error_line(code: int, err: str) -> str:
    """The one error line of a failed run (progress log lines aside)."""
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[ssl-bench]")]
    assert len(lines) == 1 and lines[0].startswith("ssl-bench: error: "), err
    return lines[0]


def record_of(results: Path) -> dict:
    (path,) = [p for p in results.rglob("*.json") if ".artifacts" not in str(p)]
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def trained_resnet18(tmp_path_factory) -> Path:
    """A ResNet-18 trained for two supervised epochs on 1000 Fashion-MNIST images (no augmentation), torchvision layout."""
    data = FashionMnist(None, limit=1000)
    labels = torch.from_numpy(data.labels("train"))
    net = build_seeded("resnet18", seed=0)
    head = torch.nn.Linear(512, 10)
    model = torch.nn.ModuleDict({"trunk": net, "head": head})

    def step(model, batch):
        images, index = batch
        return torch.nn.functional.cross_entropy(model["head"](model["trunk"].forward_taps(images, ["res5avg"])
                                                               ["res5avg"]), labels[index])

    spec = TrainSpec(optim=OptimSpec(lr=0.02, schedule="cosine", weight_decay=5e-4), batch_size=50, epochs=2)
    images = data.open_split("train", InputSpec(32, *data.normalization).eval_transform(data))
    run_dir = tmp_path_factory.mktemp("pretrain")
    Trainer(model, spec, torch.device("cpu"), run_dir, {}).fit(images, step)
    path = run_dir / "supervised_resnet18.pth"
    torch.save(net.state_dict(), path)
    return path


def linear_args(checkpoint: str, results: Path, *extra: str) -> list[str]:
    return ["run", "--checkpoint", checkpoint, "--arch", "resnet18", "--protocol", "linear",
            "--dataset", "fashion_mnist", "--limit", LIMIT, "--results", str(results), "--workers", "0",
            "--taps", "res5avg", "--set", "epochs=2", "--set", "milestones=1", "--set", "batch_size=50",
            "--set", "lr=0.5", *extra]


def test_linear_probe_on_a_trained_backbone_beats_random_init(tmp_path, capsys, trained_resnet18) -> None:
    code, out, err = run_cli(capsys, *linear_args(str(trained_resnet18), tmp_path / "trained"))
    assert code == 0, err
    code, out, err = run_cli(capsys, *linear_args("random:resnet18", tmp_path / "random"))
    assert code == 0, err
    trained, random = record_of(tmp_path / "trained"), record_of(tmp_path / "random")
    assert trained["metrics"]["res5avg"]["top1"] > random["metrics"]["res5avg"]["top1"] + 5
    history = trained["details"]["training"]["history"]
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert [entry["lr"] for entry in history] == pytest.approx([0.5 * 50 / 256, 0.05 * 50 / 256])
    assert trained["protocol"]["metrics"][0] == {"name": "top1", "higher_is_better": True, "primary": True}
    artifacts = tmp_path / "trained" / trained["checkpoint"]["name"] / trained["artifacts"]
    assert any((artifacts / "tensorboard").iterdir()) and not (artifacts / "train_state.pt").exists()
    assert 0 <= trained["metrics"]["res5avg"]["top1"] <= trained["metrics"]["res5avg"]["top5"] <= 100


def test_cached_feature_heads_agree_with_logistic_regression(tmp_path, capsys) -> None:
    code, out, err = run_cli(capsys, "run", "--checkpoint", "random:resnet18", "--protocol", "linear",
                             "--dataset", "fashion_mnist", "--limit", "1000", "--results", str(tmp_path),
                             "--workers", "0", "--taps", "res5avg", "--set", "augment=false",
                             "--set", "epochs=20", "--set", "milestones=15", "--set", "batch_size=100",
                             "--set", "lr=2.56", "--set", "weight_decay=0")
    assert code == 0, err
    record = record_of(tmp_path)
    assert record["details"]["training"]["variant"] == "cached features"
    data = FashionMnist(None, limit=1000)
    backbone = load_checkpoint("random:resnet18", seed=0).backbone.eval()
    transform = InputSpec(32, *data.normalization).eval_transform(data)
    extractor = FeatureExtractor(backbone, "x", torch.device("cpu"), None, batch_size=250)
    train = extractor.extract(data, "train", ["res5avg"], transform, "t")
    test = extractor.extract(data, "test", ["res5avg"], transform, "t")
    scaler = StandardScaler().fit(train.features["res5avg"])
    reference = LogisticRegression(max_iter=3000).fit(scaler.transform(train.features["res5avg"]), train.labels)
    expected = 100 * reference.score(scaler.transform(test.features["res5avg"]), test.labels)
    assert abs(record["metrics"]["res5avg"]["top1"] - expected) <= 2.0, (record["metrics"], expected)


def test_finetune_reports_the_whole_network_on_a_stratified_fraction(tmp_path, capsys) -> None:
    code, out, err = run_cli(capsys, "run", "--checkpoint", "random:resnet18", "--protocol", "finetune",
                             "--dataset", "fashion_mnist", "--limit", LIMIT, "--results", str(tmp_path),
                             "--workers", "0", "--set", "fraction=0.2", "--set", "epochs=2",
                             "--set", "batch_size=20")
    assert code == 0, err
    record = record_of(tmp_path)
    assert set(record["metrics"]) == {"network"} and record["taps"] == []
    labels = FashionMnist(None, limit=int(LIMIT)).labels("train")
    expected = [int(round(0.2 * n)) for n in np.bincount(labels, minlength=10)]
    assert record["details"]["labelled"]["per_class"] == expected
    assert record["details"]["labelled"]["images"] == sum(expected)
    assert 0 <= record["metrics"]["network"]["top1"] <= record["metrics"]["network"]["top5"] <= 100


def test_places205_linear_runs_the_places_recipe_on_its_lists(tmp_path, capsys) -> None:
    from benchmark.data.synthetic import make_data
    from protocols.linear import Places205LinearConfig
    recipe = Places205LinearConfig()
    assert (recipe.epochs, recipe.milestones, recipe.weight_decay, recipe.lr) == (14, (4, 8, 12), 5e-4, 0.01)
    root = make_data("places205", tmp_path / "places", seed=0, size="tiny")
    code, out, err = run_cli(capsys, "run", "--checkpoint", "random:resnet18_cifar", "--protocol",
                             "places205_linear", "--data-root", str(root), "--results", str(tmp_path / "r"),
                             "--workers", "0", "--taps", "res5avg", "--set", "batch_size=8", "--set", "epochs=2")
    assert code == 0, err
    record = record_of(tmp_path / "r")
    assert record["config"]["milestones"] == [4, 8, 12] and record["config"]["weight_decay"] == 5e-4
    assert record["dataset"]["name"] == "places205" and len(record["details"]["training"]["history"]) == 2


@pytest.mark.parametrize("protocol, settings", [
    ("linear", ["--taps", "res5avg", "--set", "epochs=2"]),
    ("finetune", ["--set", "fraction=1.0", "--set", "epochs=2"]),
])
def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path, protocol, settings) -> None:
    base = [sys.executable, "-m", "benchmark.cli", "run", "--checkpoint", "random:resnet18", "--protocol",
            protocol, "--dataset", "fashion_mnist", "--limit", "200", "--workers", "0", *settings,
            "--set", "batch_size=20", "--set", "save_every=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.run([*base, "--results", str(tmp_path / "a")], env=env, capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr
    job = subprocess.Popen([*base, "--results", str(tmp_path / "b")], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    states = tmp_path / "b"
    while not list(states.rglob("train_state.pt")) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    resumed = subprocess.run([*base, "--results", str(tmp_path / "b"), "--resume"], env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming training from step" in resumed.stderr
    a, b = record_of(tmp_path / "a"), record_of(tmp_path / "b")
    assert b["details"]["training"]["resumed_from_step"] >= 3
    assert b["metrics"] == a["metrics"]
    assert b["details"]["training"]["history"] == a["details"]["training"]["history"]


def test_label_fraction_that_empties_a_class_is_refused(tmp_path, capsys) -> None:
    code, out, err = run_cli(capsys, "run", "--checkpoint", "random:resnet18", "--protocol", "finetune",
                             "--dataset", "fashion_mnist", "--limit", "100", "--results", str(tmp_path),
                             "--set", "fraction=0.01")
    line = user_error_line(code, err)
    assert "has no images in split 'train'" in line and "after selecting the labelled fraction" in line
    assert not list(tmp_path.rglob("*.json"))


def test_subset_file_naming_missing_images_is_refused(tmp_path, capsys, folder_root) -> None:
    subset = tmp_path / "1percent.txt"
    subset.write_text("class_00/0000.jpg\n0001.jpg\nnot_there.JPEG\n")
    code, out, err = run_cli(capsys, "run", "--checkpoint", "random:resnet18_cifar", "--protocol", "finetune",
                             "--dataset", "folder", "--data-root", str(folder_root), "--results", str(tmp_path),
                             "--set", f"subset_file={subset}")
    line = user_error_line(code, err)
    assert str(subset) in line and "names 1 images" in line and "'not_there.JPEG'" in line


def test_corrupt_training_image_is_named(tmp_path, capsys) -> None:
    from benchmark.data.synthetic import write_folder
    root = tmp_path / "data"
    write_folder(root, seed=0, n_classes=2, per_class=4, size=32)
    broken = sorted((root / "train").rglob("*.*"))[2]
    broken.write_bytes(b"not an image at all")
    code, out, err = run_cli(capsys, "run", "--checkpoint", "random:resnet18_cifar", "--protocol", "linear",
                             "--dataset", "folder", "--data-root", str(root), "--results", str(tmp_path / "r"),
                             "--workers", "0", "--taps", "res5avg", "--set", "batch_size=4", "--set", "epochs=1")
    assert str(broken) in user_error_line(code, err)


def test_resume_against_a_state_of_other_settings_is_refused(tmp_path, capsys, folder_root) -> None:
    args = ["run", "--checkpoint", "random:resnet18_cifar", "--protocol", "linear", "--dataset", "folder",
            "--data-root", str(folder_root), "--results", str(tmp_path), "--workers", "0", "--taps", "res5avg",
            "--set", "batch_size=8"]
    code, out, err = run_cli(capsys, *args, "--set", "epochs=1")
    assert code == 0, err
    (artifacts,) = tmp_path.rglob("linear-*.artifacts")
    record = record_of(tmp_path)
    stale = artifacts / "train_state.pt"  # as a killed run leaves it
    torch.save({"version": 1, "identity": {"config.epochs": 1, "checkpoint": record["checkpoint"]["sha256"]}},
               stale)
    code, out, err = run_cli(capsys, *args, "--set", "epochs=2", "--resume")
    line = user_error_line(code, err)
    assert "--resume refused" in line and "config.epochs: 1 -> 2" in line
