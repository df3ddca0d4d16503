import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmark.errors import SslBenchError
from benchmark.results import (REQUIRED_KEYS, SCHEMA_VERSION, PartialState, RecordArrays, ResultStore,
                               atomic_write_text, check_writable)


def record(digest: str, value: float) -> dict:
    base = {key: {} for key in REQUIRED_KEYS}
    base.update(schema_version=SCHEMA_VERSION, seed=0, config_digest=digest,
                checkpoint={"name": "my ckpt/v1", "sha256": "c" * 64}, dataset={"name": "folder", "digest": "d"},
                protocol={"name": "knn", "primary_metric": "top1_k20",
                          "metrics": [{"name": "top1_k20", "higher_is_better": True, "primary": True}]},
                metrics={"res5avg": {"top1_k20": value}})
    return base


def test_same_config_replaces_other_config_gets_its_own_file(tmp_path):
    store = ResultStore(tmp_path)
    first = store.write(record("aaa", 1.0))
    assert first == tmp_path / "my_ckpt_v1" / "knn.json"
    assert store.write(record("aaa", 2.0)) == first
    assert json.loads(first.read_text())["metrics"]["res5avg"]["top1_k20"] == 2.0
    second = store.write(record("bbb", 3.0))
    assert second.name == "knn-bbb.json"
    assert json.loads(first.read_text())["config_digest"] == "aaa"


def with_arrays(digest: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {**record(digest, 1.0), "details": {
        "per_image": {"tap": "res5", "ids": np.array(["000005", "000007"]),
                      "scores": {"cat": rng.random(2).astype(np.float32)},
                      "labels": {"cat": np.array([1, -1], dtype=np.int8)}},
        "note": [1, 2, 3]}}


def test_arrays_go_to_a_side_file_and_come_back_exactly(tmp_path):
    store = ResultStore(tmp_path)
    original = with_arrays("aaa", 0)
    path = store.write(original)
    stored = json.loads(path.read_text())
    per_image = stored["details"]["per_image"]
    assert per_image["scores"]["cat"] == {"$array": "a1", "shape": [2], "dtype": "<f4"}
    assert stored["details"]["note"] == [1, 2, 3] and per_image["tap"] == "res5"
    side = path.with_name(stored["arrays"]["file"])
    assert side.is_file() and side.name.startswith("knn.") and side.suffix == ".npz"
    arrays = RecordArrays(path, stored)
    np.testing.assert_array_equal(arrays(per_image["ids"]), original["details"]["per_image"]["ids"])
    back = arrays(per_image["scores"]["cat"])
    assert back.dtype == np.float32 and back.tobytes() == original["details"]["per_image"]["scores"]["cat"].tobytes()
    assert arrays(per_image["labels"]["cat"]).dtype == np.int8
    assert arrays([1, 2]).tolist() == [1, 2]  # inline lists of older records


def test_rewriting_a_run_replaces_its_side_file_and_keeps_other_runs(tmp_path):
    store = ResultStore(tmp_path)
    first = store.write(with_arrays("aaa", 0))
    other = store.write(with_arrays("bbb", 1))
    old_side = first.with_name(json.loads(first.read_text())["arrays"]["file"])
    shutil.copy(old_side, tmp_path / "old.npz")
    store.write(with_arrays("aaa", 2))
    stored = json.loads(first.read_text())
    assert not old_side.exists()
    assert sorted(p.name for p in first.parent.glob("*.npz")) == sorted(
        [stored["arrays"]["file"], json.loads(other.read_text())["arrays"]["file"]])
    shutil.copy(tmp_path / "old.npz", first.with_name(stored["arrays"]["file"]))  # a foreign side file
    with pytest.raises(SslBenchError, match="belongs to another run; rerun the protocol"):
        RecordArrays(first, stored)(stored["details"]["per_image"]["ids"])


# A sweep as parallel jobs: each process waits for `go`, then writes one record per round into a fresh
# checkpoint folder, so every round starts from an empty folder with all writers at once.
WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_results import with_arrays
from benchmark.results import ResultStore
root, digest, rounds = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
while not (root / "go").exists():
    time.sleep(0.001)
for r in range(rounds):
    record = with_arrays(digest, r)
    record["checkpoint"] = {"name": f"sweep{r}", "sha256": "c" * 64}
    ResultStore(root / "results").write(record)
"""


def test_parallel_writers_keep_every_record_and_its_side_file(tmp_path):
    digests = ["d0", "d1", "d2", "d3", "same", "same"]
    rounds = 15
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(Path(__file__).parent), str(tmp_path), digest,
                                 str(rounds)], stderr=subprocess.PIPE, text=True) for digest in digests]
    (tmp_path / "go").touch()
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
    for r in range(rounds):
        folder = tmp_path / "results" / f"sweep{r}"
        records = {path: json.loads(path.read_text()) for path in folder.glob("*.json")}
        assert sorted(stored["config_digest"] for stored in records.values()) == sorted(set(digests)), r
        for path, stored in records.items():
            scores = RecordArrays(path, stored)(stored["details"]["per_image"]["scores"]["cat"])
            np.testing.assert_array_equal(scores, with_arrays("x", r)["details"]["per_image"]["scores"]["cat"])
        named = sorted(stored["arrays"]["file"] for stored in records.values())
        assert sorted(path.name for path in folder.glob("*.npz")) == named, "a side file no record names"


def test_a_folder_takes_the_weights_of_its_records(tmp_path):
    store = ResultStore(tmp_path)
    store.claim("my ckpt/v1", "e" * 64)  # an empty folder takes any weights
    path = store.write(record("aaa", 1.0))
    store.claim("my ckpt/v1", "c" * 64)  # the same weights again
    store.write(record("bbb", 2.0))
    message = (f"results folder {path.parent} already holds results of other weights named 'my ckpt/v1' "
               f"(sha256 {'c' * 12} in knn-bbb.json, this checkpoint's is {'e' * 12}); pass --name NAME")
    with pytest.raises(SslBenchError, match=re.escape(message)):
        store.claim("my ckpt/v1", "e" * 64)
    other = {**record("ccc", 3.0), "checkpoint": {"name": "my ckpt/v1", "sha256": "e" * 64}}
    with pytest.raises(SslBenchError, match="pass --name NAME"):  # a parallel run that claimed the empty folder
        store.write(other)
    assert sorted(p.name for p in path.parent.glob("*.json")) == ["knn-bbb.json", "knn.json"]


def test_side_file_problems_are_one_line_errors(tmp_path):
    path = ResultStore(tmp_path).write(with_arrays("aaa", 0))
    stored = json.loads(path.read_text())
    reference = stored["details"]["per_image"]["ids"]
    with pytest.raises(SslBenchError, match="lacks the array 'a9'"):
        RecordArrays(path, stored)({"$array": "a9"})
    outside = {**stored, "arrays": {**stored["arrays"], "file": "../../etc/passwd.npz"}}
    with pytest.raises(SslBenchError, match="names no .npz side file beside it"):
        RecordArrays(path, outside)(reference)
    side = path.with_name(stored["arrays"]["file"])
    side.write_bytes(b"not a zip")
    with pytest.raises(SslBenchError, match="cannot be read"):
        RecordArrays(path, stored)(reference)
    side.unlink()
    with pytest.raises(SslBenchError, match=f"side file {side} of {path} is missing"):
        RecordArrays(path, stored)(reference)


def test_record_missing_keys_is_a_bug():
    with pytest.raises(ValueError, match="lacks keys"):
        ResultStore("/nonexistent").write({"checkpoint": {}})


def test_record_contradicting_its_declaration_or_of_an_old_schema_is_a_bug(tmp_path):
    undeclared = record("aaa", 1.0)
    undeclared["metrics"]["res5avg"]["top5_k20"] = 2.0
    with pytest.raises(ValueError, match=r"reports metrics \['top5_k20'\] of tap 'res5avg' that protocol.metrics"):
        ResultStore(tmp_path).write(undeclared)
    with pytest.raises(ValueError, match="has schema_version 1; the store writes 2"):
        ResultStore(tmp_path).write({**record("aaa", 1.0), "schema_version": 1})
    assert not list(tmp_path.rglob("*.json"))


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "a" / "b.json"
    atomic_write_text(target, "x")
    atomic_write_text(target, "y")
    assert target.read_text() == "y"
    assert os.listdir(target.parent) == ["b.json"]
    assert target.stat().st_mode & 0o644 == 0o644, "readable like any other file, not mkstemp's 0600"


def test_partial_state_round_trip_and_resume_flag(tmp_path):
    path = tmp_path / "state.json"
    state = PartialState(path)
    state.put("tap:res5", {"mAP": 50.0})
    assert PartialState(path).get("tap:res5") == {"mAP": 50.0}
    assert len(PartialState(path, resume=False)) == 0
    path.write_text("{not json")
    with pytest.raises(SslBenchError, match="corrupt"):
        PartialState(path)
    state.discard()
    assert not path.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_results_dir(tmp_path):
    tmp_path.chmod(0o500)
    with pytest.raises(SslBenchError, match="not writable"):
        check_writable(tmp_path / "results")


def test_results_path_that_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SslBenchError, match="not writable"):
        check_writable(blocker / "results")
