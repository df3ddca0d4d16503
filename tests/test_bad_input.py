"""Bad input found by hand (issue 14, items 12-14): each is one line on stderr and exit code 2, before any compute."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmark.features
from benchmark.results import PartialState
from test_cli import assert_user_error, knn_args, no_records, run_cli


@pytest.fixture
def no_extraction(monkeypatch):
    """Extraction fails the test: every refusal here must come before any feature is computed."""

    def forbidden(*args, **kwargs):
        raise AssertionError("features were extracted before the bad input was refused")

    monkeypatch.setattr(benchmark.features.FeatureExtractor, "extract", forbidden)


@pytest.fixture
def read_only(monkeypatch):
    """deny(folder): make a folder read-only, also for root (who ignores modes), by refusing creations under it."""
    denied: list[Path] = []
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path) -> bool:
        path = Path(os.fsdecode(path)).absolute()
        return any(path != folder and folder in path.parents for folder in denied)

    def guarded_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if inside(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)

    def deny(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        denied.append(folder.absolute())
        return folder

    yield deny
    for folder in denied:
        folder.chmod(0o755)


# ---------------------------------------------------------------- item 12: paths, seeds, pipes, states, files

@pytest.mark.parametrize("case, fragments", [
    ("file", ["feature cache", "is a file", "--no-cache"]),
    ("under_file", ["feature cache", "lies under the file", "--no-cache"]),
    ("read_only", ["feature cache", "not writable", "Permission denied", "--no-cache"]),
])
def test_unusable_cache_is_refused_before_extraction(capsys, tmp_path, folder_root, no_extraction, read_only, case,
                                                     fragments):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    cache = {"file": blocker, "under_file": blocker / "cache",
             "read_only": read_only(tmp_path / "shared") / "features"}[case]
    results = tmp_path / "results"
    code, _, err = run_cli(capsys, *knn_args("random:resnet18_cifar", folder_root, results, "--cache", str(cache)))
    assert_user_error(code, err, str(cache), *fragments)
    assert no_records(results)


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(-2**40)])
def test_seed_out_of_range(capsys, tmp_path, folder_root, no_extraction, seed):
    code, _, err = run_cli(capsys, *knn_args("random:resnet18_cifar", folder_root, tmp_path / "r", "--seed", seed))
    assert_user_error(code, err, "--seed", "0 to 4294967295", seed)
    code, _, err = run_cli(capsys, "make-data", "folder", "--out", str(tmp_path / "data"), "--seed", seed)
    assert_user_error(code, err, "--seed")
    assert not (tmp_path / "data").exists()


def test_read_only_checkpoint_results_folder(capsys, tmp_path, folder_root, no_extraction, read_only):
    results = tmp_path / "results"
    folder = read_only(results / "random-resnet18_cifar")
    code, _, err = run_cli(capsys, *knn_args("random:resnet18_cifar", folder_root, results))
    assert_user_error(code, err, f"results folder {folder}", "not writable", "--name NAME")


@pytest.fixture(scope="module")
def finished_results(tmp_path_factory, folder_root) -> Path:
    from benchmark.runner import RunOptions, run

    results = tmp_path_factory.mktemp("finished")
    run(RunOptions(checkpoint="random:resnet18_cifar", protocol="knn", dataset="folder", data_root=folder_root,
                   taps=("res5avg",), results_dir=results, overrides={"ks": "1,3"}, cache_dir=None))
    return results


def test_write_baseline_into_a_folder(capsys, tmp_path, finished_results):
    folder = tmp_path / "baselines"
    folder.mkdir()
    code, _, err = run_cli(capsys, "regress", "--baseline", str(folder), "--write-baseline",
                           "--results", str(finished_results))
    assert_user_error(code, err, f"baseline {folder} is a folder", "--baseline FILE")
    assert list(folder.iterdir()) == []


def test_junit_path_problems_are_exit_2_and_a_missing_folder_is_made(capsys, tmp_path, finished_results):
    baseline = tmp_path / "baseline.json"
    code, _, err = run_cli(capsys, "regress", "--baseline", str(baseline), "--write-baseline",
                           "--results", str(finished_results))
    assert code == 0, err
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    for junit, fragments in ((blocker / "junit.xml", [f"its folder {blocker} is not writable: it is a file"]),
                             (tmp_path, ["is a folder", "--junit FILE"])):
        code, out, err = run_cli(capsys, "regress", "--baseline", str(baseline), "--results", str(finished_results),
                                 "--junit", str(junit))
        assert_user_error(code, err, str(junit), *fragments)
        assert "PASSED" not in out and "FAILED" not in out  # refused before comparing
    junit = tmp_path / "ci" / "reports" / "regress.xml"
    code, _, err = run_cli(capsys, "regress", "--baseline", str(baseline), "--results", str(finished_results),
                           "--junit", str(junit))
    assert code == 0, err
    assert junit.read_text().startswith("<?xml")


def test_inspect_into_a_closed_pipe_stops_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "inspect", "--keys", "random:resnet18_cifar"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # as `| head` does once it has its lines
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert err == "" and proc.returncode == 141  # 128 + SIGPIPE, as cat or git under `| head`


@pytest.fixture
def interrupted_state(tmp_path, folder_root, monkeypatch) -> tuple[Path, Path]:
    """A knn run stopped right after saving its first finished piece: (results, the partial state file)."""
    from benchmark.runner import RunOptions, run

    saved = []
    original = PartialState.put

    def put_then_stop(self, key, value):
        original(self, key, value)
        saved.append(self.path)
        raise KeyboardInterrupt

    results = tmp_path / "results"
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(PartialState, "put", put_then_stop)
        run(RunOptions(checkpoint="random:resnet18_cifar", protocol="knn", dataset="folder", data_root=folder_root,
                       taps=("res4", "res5avg"), results_dir=results, overrides={"ks": "1,3"}))
    return results, saved[0]


@pytest.mark.parametrize("content, fragments", [
    ([["tap:res4", 1]], ["holds a JSON list", "delete it or run without --resume"]),
    ("not an object", ["holds a JSON str"]),
    ({"tap:res4": [1, 2, 3]}, ["does not fit this run", "delete it or run without --resume"]),
    ({"tap:res4": {"metrics": 7}}, ["does not fit this run"]),
])
def test_partial_state_of_another_shape(capsys, folder_root, interrupted_state, content, fragments):
    results, state = interrupted_state
    state.write_text(json.dumps(content))
    code, _, err = run_cli(capsys, *knn_args("random:resnet18_cifar", folder_root, results, "--taps", "res4,res5avg",
                                             "--resume"))
    assert_user_error(code, err, str(state), *fragments)
    assert not list(results.glob("*/knn*.json"))


def test_truncated_checkpoint_says_so_in_whole_sentences(capsys, tmp_path, folder_root, resnet18_cifar_file):
    data = resnet18_cifar_file.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[:len(data) // 2])
    code, _, err = run_cli(capsys, *knn_args(str(truncated), folder_root, tmp_path / "r"))
    assert_user_error(code, err, str(truncated), "truncated", f"{len(data) // 2} bytes")
    assert err.rstrip().endswith("copy or download it again")


def test_whole_sentences_never_cuts_a_word():
    from benchmark.errors import whole_sentences

    text = "First sentence here. Second sentence is much longer than the limit allows for sure."
    assert whole_sentences(text, 200) == text
    assert whole_sentences(text, 40) == "First sentence here."
    cut = whole_sentences("one two three four five six seven", 20)
    assert cut == "one two three ..." and len(cut) <= 20


# ---------------------------------------------------------------- item 13: only the splits a run reads

@pytest.fixture
def voc_without_train_val(tmp_path, voc_root) -> Path:
    root = tmp_path / "voc"
    shutil.copytree(voc_root, root)
    main = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    for path in [*main.glob("train.txt"), *main.glob("val.txt"), *main.glob("*_train.txt"), *main.glob("*_val.txt")]:
        path.unlink()
    return root


def test_voc07_svm_runs_without_the_train_and_val_lists(capsys, tmp_path, voc_without_train_val):
    results = tmp_path / "results"
    svm = ["run", "--checkpoint", "random:resnet18_cifar", "--protocol", "voc07_svm", "--dataset", "voc2007",
           "--data-root", str(voc_without_train_val), "--results", str(results), "--workers", "0",
           "--taps", "res5avg", "--limit", "30", "--no-cache"]
    code, _, err = run_cli(capsys, *svm)
    assert code == 0, err
    record = json.loads(next(results.rglob("voc07_svm.json")).read_text())
    assert set(record["dataset"]["splits"]) == {"trainval", "test"}
    code, _, err = run_cli(capsys, *svm, "--set", "train_split=train")
    listing = voc_without_train_val / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "train.txt"
    assert_user_error(code, err, "split 'train'", str(listing), "missing", "splits found: trainval, test")


def test_voc_digest_covers_the_lists_present(voc_root, voc_without_train_val):
    from benchmark.data.voc import Voc2007

    full, partial = Voc2007(voc_root), Voc2007(voc_without_train_val)
    assert full.present_splits() == ("trainval", "test", "train", "val")
    assert partial.present_splits() == ("trainval", "test")
    assert partial.labels("test").shape == full.labels("test").shape
    assert partial.digest() != full.digest()


# ---------------------------------------------------------------- item 14: --device cuda without a GPU

@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_explicit_cuda_without_a_gpu(capsys, tmp_path, folder_root, monkeypatch, no_extraction, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(capsys, *knn_args("random:resnet18_cifar", folder_root, tmp_path / "r",
                                             "--device", device))
    assert_user_error(code, err, f"--device {device}", "CUDA is not available", "--device cpu")
    assert no_records(tmp_path / "r")


# ---------------------------------------------------------------- item 18: one split for training and testing

@pytest.mark.parametrize("sets", [["test_split=train"], ["train_split=val"], ["train_split=val", "test_split=val"]])
def test_training_and_testing_on_one_split_is_refused(capsys, tmp_path, folder_root, no_extraction, sets):
    extra = [item for value in sets for item in ("--set", value)]
    code, _, err = run_cli(capsys, *knn_args("random:resnet18_cifar", folder_root, tmp_path / "r", *extra))
    assert_user_error(code, err, "same split", "train_split=NAME", "train, val")
