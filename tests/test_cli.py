"""The CLI end to end: a real run, and every bad input as one line on stderr with exit code 2."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[ssl-bench] ")]  # logs
    assert len(lines) == 1, err
    assert lines[0].startswith("ssl-bench: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def knn_args(checkpoint: str, folder_root: Path, results: Path, *extra: str) -> list[str]:
    return ["run", "--checkpoint", checkpoint, "--protocol", "knn", "--dataset", "folder",
            "--data-root", str(folder_root), "--results", str(results), "--workers", "0",
            "--set", "ks=1,3", *extra]


def no_records(results: Path) -> bool:
    return not list(results.rglob("*.json")) if results.exists() else True


def test_knn_end_to_end_writes_a_complete_record_and_reuses_the_cache(capsys, tmp_path, folder_root,
                                                                      resnet18_cifar_file):
    results = tmp_path / "results"
    code, out, err = run_cli(capsys, *knn_args(str(resnet18_cifar_file), folder_root, results,
                                               "--taps", "res4,res5avg"))
    assert code == 0, err
    path = results / "r18c" / "knn.json"
    assert f"result: {path}" in out
    record = json.loads(path.read_text())
    for key in ("checkpoint", "protocol", "config", "dataset", "metrics", "seed", "versions", "device",
                "timings", "taps", "preprocessing", "schema_version"):
        assert key in record
    assert record["checkpoint"]["format"] == "torchvision"
    assert record["checkpoint"]["arch"] == "resnet18_cifar"
    assert len(record["checkpoint"]["sha256"]) == 64
    assert record["config"]["ks"] == [1, 3]
    assert record["dataset"]["name"] == "folder" and len(record["dataset"]["digest"]) == 64
    assert set(record["metrics"]) == {"res4", "res5avg"}
    for values in record["metrics"].values():
        assert set(values) == {"top1_k1", "top1_k3", "top5_k1", "top5_k3"}
        assert all(0.0 <= v <= 100.0 for v in values.values())
    first_extract = record["timings"]["extract_s"]

    code, _, err = run_cli(capsys, *knn_args(str(resnet18_cifar_file), folder_root, results,
                                             "--taps", "res4,res5avg"))
    assert code == 0, err
    again = json.loads(path.read_text())
    assert again["metrics"] == record["metrics"]
    assert again["timings"]["extract_s"] < first_extract

    code, _, err = run_cli(capsys, *knn_args(str(resnet18_cifar_file), folder_root, results,
                                             "--taps", "res5avg", "--set", "temperature=0.1"))
    assert code == 0, err
    assert len(list((results / "r18c").glob("knn-*.json"))) == 1


@pytest.fixture
def bad_files(tmp_path, resnet18_cifar_file):
    from checkpoints.models import build_backbone

    files = {}
    files["not_checkpoint"] = tmp_path / "notes.pth"
    files["not_checkpoint"].write_bytes(os.urandom(2048))
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    files["evil"] = tmp_path / "evil.pth"
    files["evil"].write_bytes(pickle.dumps({"state_dict": Evil()}))
    files["marker"] = marker
    files["r18"] = tmp_path / "r18.pth"
    torch.save(build_backbone("resnet18").state_dict(), files["r18"])
    state = torch.load(resnet18_cifar_file, weights_only=True)
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    files["partial"] = tmp_path / "partial.pth"
    torch.save(partial, files["partial"])
    nan = dict(state)
    nan["layer2.0.conv1.weight"] = torch.full_like(nan["layer2.0.conv1.weight"], math.nan)
    files["nan"] = tmp_path / "nan.pth"
    torch.save(nan, files["nan"])
    inf = dict(state)
    inf["bn1.weight"] = torch.full_like(inf["bn1.weight"], math.inf)
    files["inf"] = tmp_path / "inf.pth"
    torch.save(inf, files["inf"])
    return files


@pytest.mark.parametrize("case, extra, fragments", [
    ("missing", [], ["does-not-exist.pth"]),
    ("not_checkpoint", [], ["notes.pth"]),
    ("evil", [], ["evil.pth"]),
    ("r18", ["--arch", "resnet50"], ["resnet18", "resnet50"]),
    ("partial", ["--arch", "resnet18_cifar"], ["missing", "layer4"]),
    ("nan", [], ["layer2.0.conv1.weight"]),
    ("inf", [], ["bn1.weight"]),
])
def test_bad_checkpoints(capsys, tmp_path, folder_root, bad_files, case, extra, fragments):
    spec = str(tmp_path / "does-not-exist.pth") if case == "missing" else str(bad_files[case])
    results = tmp_path / "results"
    code, _, err = run_cli(capsys, *knn_args(spec, folder_root, results, *extra))
    assert_user_error(code, err, *fragments)
    assert not bad_files["marker"].exists()
    assert no_records(results)


def test_partial_checkpoint_runs_with_allow_partial(capsys, tmp_path, folder_root, bad_files):
    code, _, err = run_cli(capsys, *knn_args(str(bad_files["partial"]), folder_root, tmp_path / "r",
                                             "--arch", "resnet18_cifar", "--allow-partial",
                                             "--taps", "res3"))
    assert code == 0, err
    record = json.loads(next((tmp_path / "r").rglob("knn.json")).read_text())
    assert record["checkpoint"]["missing_keys"] > 0


@pytest.mark.parametrize("argv, fragments", [
    (["--protocol", "knnn"], ["unknown protocol 'knnn'", "Did you mean 'knn'"]),
    (["--dataset", "fashionmnist"], ["unknown dataset 'fashionmnist'", "fashion_mnist"]),
    (["--checkpoint", "random:resnet5"], ["unknown architecture 'resnet5'", "resnet50"]),
    (["--checkpoint", "zoo:moco_v3"], ["zoo", "moco_v3"]),
    (["--taps", "res6"], ["no tap 'res6'"]),
    (["--set", "kk=3"], ["unknown --set key 'kk'", "ks"]),
    (["--set", "temperature=warm"], ["temperature=warm", "a number"]),
    (["--set", "ks=0"], ["ks"]),
])
def test_bad_names_and_settings(capsys, tmp_path, folder_root, argv, fragments):
    base = {"--checkpoint": "random:resnet18_cifar", "--protocol": "knn", "--dataset": "folder"}
    flags = dict(zip(argv[::2], argv[1::2]))
    chosen = {**base, **{k: v for k, v in flags.items() if k in base}}
    extra = [item for k, v in flags.items() if k not in base for item in (k, v)]
    results = tmp_path / "results"
    code, _, err = run_cli(capsys, "run", "--checkpoint", chosen["--checkpoint"], "--protocol",
                           chosen["--protocol"], "--dataset", chosen["--dataset"], "--data-root",
                           str(folder_root), "--results", str(results), "--workers", "0", *extra)
    assert_user_error(code, err, *fragments)
    assert no_records(results)


def test_missing_data_root(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    code, _, err = run_cli(capsys, "run", "--checkpoint", "random:resnet18_cifar", "--protocol", "knn",
                           "--dataset", "folder", "--data-root", str(missing), "--results",
                           str(tmp_path / "r"))
    assert_user_error(code, err, str(missing))


def test_voc_missing_listed_file(capsys, tmp_path, voc_root):
    import shutil

    broken = tmp_path / "voc"
    shutil.copytree(voc_root, broken)
    listing = next((broken / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main").glob("aeroplane_test.txt"))
    listing.unlink()
    from benchmark.data.voc import Voc2007  # noqa: F401  (registers the dataset)
    from benchmark.errors import SslBenchError
    from benchmark.registry import DATASETS

    with pytest.raises(SslBenchError, match="aeroplane_test.txt"):
        DATASETS.get("voc2007")(root=broken, limit=None).labels("test")


def test_corrupt_image_names_the_file(capsys, tmp_path, folder_root):
    import shutil

    broken = tmp_path / "folder"
    shutil.copytree(folder_root, broken)
    victim = sorted((broken / "train").rglob("*.*"))[0]
    victim.write_bytes(b"not an image at all")
    code, _, err = run_cli(capsys, *knn_args("random:resnet18_cifar", broken, tmp_path / "r"))
    assert_user_error(code, err, victim.name)
    assert no_records(tmp_path / "r")


def test_unwritable_results_dir_fails_before_any_compute(capsys, tmp_path, folder_root, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    import benchmark.features

    def forbidden(*args, **kwargs):
        raise AssertionError("features were extracted before the results dir was checked")

    monkeypatch.setattr(benchmark.features.FeatureExtractor, "extract", forbidden)
    code, _, err = run_cli(capsys, *knn_args("random:resnet18_cifar", folder_root, blocker / "results"))
    assert_user_error(code, err, "not writable", "results")


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--checkpoint",
                           str(tmp_path / "missing.pth"), "--protocol", "knn"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "missing.pth" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_is_fast_and_complete():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "benchmark.cli", "run", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--checkpoint", "--protocol", "--dataset", "--data-root", "--taps", "--results",
                 "--device", "--set", "--resume", "--allow-partial", "--arch"):
        assert flag in proc.stdout
    assert "torch" not in {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()}


def test_list_commands(capsys):
    for what, expected in [("protocols", "knn"), ("datasets", "voc2007"), ("archs", "resnet50"),
                           ("zoo", "resnet50")]:
        code, out, _ = run_cli(capsys, "list", what)
        assert code == 0 and expected in out


def test_inspect_reports_format_arch_and_keys(capsys, resnet18_cifar_file):
    code, out, _ = run_cli(capsys, "inspect", str(resnet18_cifar_file))
    assert code == 0
    assert "torchvision" in out and "resnet18_cifar" in out
    assert "missing" in out


def test_make_data_unknown_kind(capsys, tmp_path):
    code, _, err = run_cli(capsys, "make-data", "vocc", "--out", str(tmp_path))
    assert_user_error(code, err, "vocc", "voc")


def files_under(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_other_weights_under_a_taken_file_name_are_refused_before_any_compute(capsys, tmp_path, folder_root,
                                                                              resnet18_cifar_file, monkeypatch):
    import shutil

    import benchmark.features
    from checkpoints.formats import load_checkpoint
    from checkpoints.models import build_seeded

    first, second = tmp_path / "run1" / "checkpoint.pth", tmp_path / "run2" / "checkpoint.pth"
    first.parent.mkdir()
    second.parent.mkdir()
    shutil.copy(resnet18_cifar_file, first)
    torch.save(build_seeded("resnet18_cifar", 1).state_dict(), second)
    shas = [load_checkpoint(str(path)).sha256 for path in (first, second)]
    results = tmp_path / "results"
    for _ in range(2):  # the same file again is the same checkpoint
        code, _, err = run_cli(capsys, *knn_args(str(first), folder_root, results, "--taps", "res5avg"))
        assert code == 0, err
    before = files_under(results)

    def forbidden(*args, **kwargs):
        raise AssertionError("features were extracted before the checkpoint name was checked")

    with monkeypatch.context() as patch:
        patch.setattr(benchmark.features.FeatureExtractor, "extract", forbidden)
        code, _, err = run_cli(capsys, *knn_args(str(second), folder_root, results, "--taps", "res5avg"))
    assert_user_error(code, err, f"results folder {results / 'checkpoint'} ", shas[0][:12], shas[1][:12],
                      "pass --name NAME")
    assert files_under(results) == before

    code, _, err = run_cli(capsys, *knn_args(str(second), folder_root, results, "--taps", "res5avg",
                                             "--name", "checkpoint-run2"))
    assert code == 0, err
    for name, sha in zip(("checkpoint", "checkpoint-run2"), shas):
        assert [json.loads(p.read_text())["checkpoint"]["sha256"] for p in (results / name).glob("*.json")] == [sha]


def test_random_weights_rerun_with_their_seed_and_are_refused_with_another(capsys, tmp_path, folder_root):
    results = tmp_path / "results"
    for _ in range(2):
        code, _, err = run_cli(capsys, *knn_args("random:resnet18_cifar", folder_root, results, "--taps", "res5avg"))
        assert code == 0, err
    code, _, err = run_cli(capsys, *knn_args("random:resnet18_cifar", folder_root, results, "--taps", "res5avg",
                                             "--seed", "1"))
    assert_user_error(code, err, str(results / "random-resnet18_cifar"), "pass --name NAME")
