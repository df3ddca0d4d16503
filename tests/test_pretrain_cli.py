"""`ssl-bench pretrain` through the CLI: a checkpoint `run` reads, and bad input as one line with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch

from test_linear import run_cli
from test_linear import user_error_line as error_line

BASE = ["pretrain", "--recipe", "simclr", "--arch", "resnet18", "--workers", "0", "--epochs", "1"]




def test_pretrained_checkpoint_is_read_by_run_as_it_is(tmp_path, capsys) -> None:
    out = tmp_path / "simclr"
    code, stdout, err = run_cli(capsys, *BASE, "--limit", "64", "--batch-size", "32", "--out", str(out),
                                "--eval-every", "1", "--eval-limit", "64")
    assert code == 0, err
    assert "kNN check: top1_k20" in err
    saved = torch.load(out / "checkpoint.pth", weights_only=True)
    meta = saved["ssl_bench"]
    assert meta["recipe"] == "simclr" and meta["config"]["batch_size"] == 32 and meta["epoch"] == 1
    assert meta["config"]["temperature"] == 0.1 and meta["dataset"]["name"] == "fashion_mnist"
    assert "knn_top1_k20" in meta["training"]["history"][0]
    assert saved["heads"] and not any(key.startswith("projector") for key in saved["state_dict"])
    assert not (out / "train_state.pt").exists() and any((out / "tensorboard").iterdir())
    code, stdout, err = run_cli(capsys, "run", "--checkpoint", str(out / "checkpoint.pth"), "--protocol", "knn",
                                "--dataset", "fashion_mnist", "--limit", "64", "--workers", "0",
                                "--results", str(tmp_path / "results"), "--set", "ks=5")
    assert code == 0, err
    (record,) = (tmp_path / "results").rglob("knn.json")
    assert json.loads(record.read_text())["checkpoint"]["format"] == "native"


def test_finished_run_is_not_overwritten(tmp_path, capsys) -> None:
    (tmp_path / "checkpoint.pth").write_bytes(b"done")
    line = error_line(*run_cli(capsys, *BASE, "--limit", "64", "--batch-size", "32", "--out", str(tmp_path))[::2])
    assert "holds a finished run" in line and "--overwrite" in line
    assert (tmp_path / "checkpoint.pth").read_bytes() == b"done"


@pytest.mark.parametrize("extra, fragment", [
    (["--batch-size", "100"], "batch size 100 is larger than the 64 images"),
    (["--set", "tempreature=0.2"], "unknown --set key 'tempreature' for recipe 'simclr'; valid keys:"),
    (["--recipe", "simclear"], "simclr"),
])
def test_bad_input_is_one_line(tmp_path, capsys, extra, fragment) -> None:
    line = error_line(*run_cli(capsys, *BASE, "--limit", "64", "--out", str(tmp_path / "o"), *extra)[::2])
    assert fragment in line


def test_a_dataset_without_images_is_refused(tmp_path, capsys) -> None:
    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / split / "empty_class").mkdir(parents=True)
    line = error_line(*run_cli(capsys, *BASE, "--dataset", "folder", "--data-root", str(root),
                               "--out", str(tmp_path / "o"))[::2])
    assert str(root / "train") in line
