"""Issue 14, item 18: stage log lines off a terminal (rank 0 only), make-data never merging, no empty .partial/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.data.make_output import MARKER
from benchmark.progress import StageLog, progress_factory
from benchmark.results import PartialState
from test_cli import assert_user_error, knn_args, run_cli


def log_lines(err: str) -> list[str]:
    return [line.removeprefix("[ssl-bench] ") for line in err.splitlines() if line.startswith("[ssl-bench] ")]


def test_a_run_off_a_terminal_logs_each_stage_with_counts_and_times(capsys, tmp_path, folder_root):
    code, _, err = run_cli(capsys, *knn_args("random:resnet18_cifar", folder_root, tmp_path / "r", "--taps",
                                             "res4,res5avg"))
    assert code == 0, err
    lines = log_lines(err)
    assert any(line.startswith("dataset folder: train 24, val 12 images, checked in ") for line in lines), lines
    for split, count in (("train", 24), ("val", 12)):
        assert any(line.startswith(f"features {split} [res4, res5avg]: {count} images in ") for line in lines), lines
    assert any(line.startswith("knn: done in ") and line.endswith("s") for line in lines), lines


def test_only_rank_zero_logs(capsys, tmp_path, folder_root, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # a torchrun worker's environment (WORLD_SIZE unset: no process group)
    code, _, err = run_cli(capsys, *knn_args("random:resnet18_cifar", folder_root, tmp_path / "r"))
    assert code == 0, err
    assert log_lines(err) == []
    assert getattr(progress_factory(print, terminal=False)(range(3), desc="x"), "disable", False) is True


def test_stage_log_reports_long_loops_and_behaves_like_a_hidden_bar():
    lines: list[str] = []
    stage = StageLog(range(3), "train epoch 1/2", None, lines.append, heartbeat_s=0.0)
    assert stage.disable is True and len(stage) == 3
    seen = []
    for item in stage:
        stage.set_postfix(loss="0.5")
        seen.append(item)
    assert seen == [0, 1, 2]
    assert lines == [f"train epoch 1/2: {n}/3 after 0s, loss 0.5" for n in (1, 2, 3)]
    quiet: list[str] = []
    assert list(StageLog(iter("ab"), "x", None, quiet.append)) == ["a", "b"] and quiet == []
    assert not isinstance(progress_factory(print, terminal=True)(range(2), desc="x"), StageLog)


def images(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}


def test_make_data_never_merges(capsys, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    code, _, err = run_cli(capsys, "make-data", "folder", "--out", str(out))
    assert_user_error(code, err, f"--out {out} is not empty", "1 files", "--overwrite")
    assert images(out) == set()
    code, _, err = run_cli(capsys, "make-data", "folder", "--out", str(out), "--overwrite", "--size", "small")
    assert code == 0, err
    small = images(out)
    code, _, err = run_cli(capsys, "make-data", "folder", "--out", str(out), "--seed", "3")  # same kind: replaced
    assert code == 0, err
    tiny = images(out)
    fresh = tmp_path / "fresh"
    code, _, err = run_cli(capsys, "make-data", "folder", "--out", str(fresh), "--seed", "3")
    assert code == 0, err
    assert tiny == images(fresh) and len(tiny) < len(small)
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(p.name for p in (fresh / "train").iterdir())
    assert (out / "notes.txt").read_text() == "the user's"
    assert json.loads((out / MARKER).read_text())["kind"] == "folder"
    code, _, err = run_cli(capsys, "make-data", "voc", "--out", str(out))
    assert_user_error(code, err, "not empty", "make-data folder output")


def test_no_empty_partial_folder_stays_behind(tmp_path, folder_root, monkeypatch):
    from benchmark.runner import RunOptions, run

    options = RunOptions(checkpoint="random:resnet18_cifar", protocol="knn", dataset="folder", data_root=folder_root,
                         taps=("res4", "res5avg"), results_dir=tmp_path, overrides={"ks": "1,3"})
    original = PartialState.put

    def put_then_stop(self, key, value):
        original(self, key, value)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(PartialState, "put", put_then_stop)
        run(options)
    folder = tmp_path / "random-resnet18_cifar" / ".partial"
    assert len(list(folder.iterdir())) == 1
    run(RunOptions(**{**vars(options), "resume": True}))
    assert not folder.exists()


@pytest.mark.parametrize("arch, tap", [("alexnet", "conv5"), ("resnet18_cifar", "res5avg")])
def test_knn_defaults_to_the_arch_last_tap(capsys, tmp_path, folder_root, arch, tap):
    results = tmp_path / "r"
    code, _, err = run_cli(capsys, "run", "--checkpoint", f"random:{arch}", "--protocol", "knn", "--dataset",
                           "folder", "--data-root", str(folder_root), "--results", str(results), "--workers", "0",
                           "--set", "ks=1,3", "--no-cache", "--limit", "6", "--batch-size", "6")
    assert code == 0, err
    record = json.loads(next(results.rglob("knn.json")).read_text())
    assert record["taps"] == [tap] and set(record["metrics"]) == {tap}
