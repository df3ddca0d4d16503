import json
import os

import pytest

from benchmark.errors import SslBenchError
from benchmark.results import REQUIRED_KEYS, PartialState, ResultStore, atomic_write_text, check_writable


def record(digest: str, value: float) -> dict:
    base = {key: {} for key in REQUIRED_KEYS}
    base.update(schema_version=1, seed=0, config_digest=digest,
                checkpoint={"name": "my ckpt/v1"}, protocol={"name": "knn"},
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


def test_record_missing_keys_is_a_bug():
    with pytest.raises(ValueError, match="lacks keys"):
        ResultStore("/nonexistent").write({"checkpoint": {}})


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
