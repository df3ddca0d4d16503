"""Loading result records into the tidy frame: validation, warnings, variants, duplicates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmark.config import config_digest
from benchmark.errors import SslBenchError
from reports.records import COLUMNS, load_records


def write_record(root: Path, checkpoint: str, protocol: str, metrics: dict[str, dict[str, float]],
                 primary: str, config: dict[str, Any] | None = None, file: str | None = None,
                 details: dict[str, Any] | None = None, created: str = "2024-01-01T00:00:00+00:00",
                 dataset: str = "voc2007", dataset_digest: str = "d" * 64, seed: int = 0,
                 declared: dict[str, bool | None] | None = None) -> Path:
    """A record with the runner's keys at RESULTS/<checkpoint>/<file or protocol>.json.

    Without `declared` it is a schema-1 record (directions guessed from the names); with it ({metric:
    higher_is_better}), a schema-2 record declaring those metrics. Metrics under "network" get no taps.
    """
    record = {
        "schema_version": 1,
        "checkpoint": {"name": checkpoint, "spec": f"{checkpoint}.pth", "sha256": "0" * 64, "arch": "resnet18"},
        "protocol": {"name": protocol, "version": "1", "primary_metric": primary},
        "config": config or {},
        "config_digest": config_digest({"checkpoint": checkpoint, "config": config, "seed": seed}),
        "dataset": {"name": dataset, "digest": dataset_digest, "splits": {}, "limit": None, "root": None},
        "taps": [tap for tap in metrics if tap != "network"],
        "preprocessing": {},
        "metrics": metrics,
        "details": details or {},
        "seed": seed,
        "versions": {"ssl_bench": "0"},
        "device": {"type": "cpu"},
        "timings": {"total_s": 1.0},
        "created": created,
        "resumed_pieces": 0,
    }
    if declared is not None:
        record["schema_version"] = 2
        record["protocol"]["metrics"] = [{"name": name, "higher_is_better": higher, "primary": name == primary}
                                         for name, higher in declared.items()]
    path = root / checkpoint / (file or f"{protocol}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def voc(root: Path, checkpoint: str, res4: float, res5: float, **extra: Any) -> Path:
    return write_record(root, checkpoint, "voc07_svm", {"res4": {"mAP": res4, "mAP_11pt": res4 + 1},
                                                        "res5": {"mAP": res5, "mAP_11pt": res5 + 1}}, "mAP", **extra)


def test_frame_holds_every_number_with_its_provenance(tmp_path):
    voc(tmp_path, "a", 50.0, 60.0)
    path = write_record(tmp_path, "b", "knn", {"res5avg": {"top1_k20": 71.5, "top5_k20": 90.0}}, "top1_k20",
                        dataset="fashion_mnist")
    records = load_records(tmp_path)
    frame = records.frame
    assert tuple(frame.columns) == COLUMNS
    assert len(frame) == 6 and len(records.records) == 2
    row = frame[(frame["checkpoint"] == "b") & (frame["metric"] == "top1_k20")].iloc[0]
    assert row["value"] == 71.5 and row["primary"] and row["tap"] == "res5avg"
    assert row["variant"] == "knn" and row["dataset"] == "fashion_mnist" and row["path"] == str(path)
    assert set(frame.loc[frame["primary"], "metric"]) == {"mAP", "top1_k20"}
    assert records.checkpoints == ["a", "b"]
    assert records.variants["voc07_svm"]["primary_metric"] == "mAP"


@pytest.mark.parametrize("content, reason", [
    ("{not json", "not valid JSON"),
    (json.dumps([1, 2]), "expected a JSON object"),
    (json.dumps({"schema_version": 1, "checkpoint": {"name": "x"}}), "protocol"),
])
def test_malformed_record_is_skipped_with_a_warning_naming_it(tmp_path, content, reason):
    voc(tmp_path, "good", 50.0, 60.0)
    bad = tmp_path / "bad" / "voc07_svm.json"
    bad.parent.mkdir()
    bad.write_text(content)
    warnings: list[str] = []
    records = load_records(tmp_path, warn=warnings.append)
    assert set(records.frame["checkpoint"]) == {"good"}
    assert len(warnings) == 1 and str(bad) in warnings[0] and reason in warnings[0]
    assert str(bad) in records.skipped
    with pytest.raises(SslBenchError, match="bad/voc07_svm.json") as error:
        load_records(tmp_path, strict=True)
    assert "\n" not in str(error.value)


def test_wrong_types_and_missing_metrics_are_malformed(tmp_path):
    voc(tmp_path, "good", 50.0, 60.0)
    write_record(tmp_path, "text", "knn", {"res5avg": {"top1_k20": "71.5"}}, "top1_k20")
    write_record(tmp_path, "empty", "knn", {}, "top1_k20")
    warnings: list[str] = []
    records = load_records(tmp_path, warn=warnings.append)
    assert set(records.frame["checkpoint"]) == {"good"}
    assert any("text" in w and "non-numeric" in w for w in warnings)
    assert any("empty" in w and "metrics" in w for w in warnings)


def test_other_schema_version_is_skipped_or_fatal_under_strict(tmp_path):
    voc(tmp_path, "good", 50.0, 60.0)
    path = voc(tmp_path, "future", 50.0, 60.0)
    path.write_text(path.read_text().replace('"schema_version": 1', '"schema_version": 3'))
    warnings: list[str] = []
    assert set(load_records(tmp_path, warn=warnings.append).frame["checkpoint"]) == {"good"}
    assert "schema_version 3" in warnings[0] and "reads versions 1, 2" in warnings[0] and "future" in warnings[0]
    with pytest.raises(SslBenchError, match="schema_version 3"):
        load_records(tmp_path, strict=True)


def test_directions_come_from_the_declaration_and_from_the_name_for_schema_1(tmp_path):
    write_record(tmp_path, "new", "normals", {"network": {"median": 14.0, "score_std": 1.0, "loss": 0.5}}, "median",
                 dataset="nyuv2", declared={"median": False, "score_std": None, "loss": True})
    write_record(tmp_path, "old", "lowshot", {"res5": {"mAP_k4_mean": 50.0, "mAP_k4_std": 1.0,
                                                       "median_error": 9.0}}, "mAP_k4_mean")
    records = load_records(tmp_path)
    directions = {(r.checkpoint, r.metric): r.higher_is_better for r in records.frame.itertuples()}
    assert directions == {("new", "median"): False, ("new", "score_std"): None, ("new", "loss"): True,
                          ("old", "mAP_k4_mean"): True, ("old", "mAP_k4_std"): None, ("old", "median_error"): False}
    assert records.frame["higher_is_better"].dtype == object
    assert records.direction("normals", "median") is False and records.direction("normals", "score_std") is None
    assert records.frame.loc[records.frame["checkpoint"] == "new", "tap"].unique().tolist() == ["network"]


def test_the_newest_record_of_a_variant_declares_its_directions(tmp_path):
    write_record(tmp_path, "a", "normals", {"res5": {"median": 14.0}}, "median", declared={"median": True})
    write_record(tmp_path, "b", "normals", {"res5": {"median": 12.0}}, "median", declared={"median": False},
                 created="2024-03-01T00:00:00+00:00")
    assert load_records(tmp_path).direction("normals", "median") is False


@pytest.mark.parametrize("declared, primary, reason", [
    ({"top1": True}, "top1", "reports metrics ['top5'] of tap 'network' that protocol.metrics does not declare"),
    ({"top1": True, "top5": True}, "top5x", "declares the primary metrics [] in protocol.metrics"),
    ({"top1": "yes", "top5": True}, "top1", "without higher_is_better true, false or null"),
    ({"top1": None, "top5": True}, "top1", "declares the primary metric 'top1' with no direction"),
])
def test_records_that_contradict_their_declaration_are_malformed(tmp_path, declared, primary, reason):
    voc(tmp_path, "good", 50.0, 60.0)
    write_record(tmp_path, "bad", "finetune", {"network": {"top1": 70.0, "top5": 90.0}}, primary, declared=declared)
    warnings: list[str] = []
    assert set(load_records(tmp_path, warn=warnings.append).frame["checkpoint"]) == {"good"}
    assert len(warnings) == 1 and reason in warnings[0] and "bad" in warnings[0]


def test_empty_or_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(SslBenchError, match="no result records under .*ssl-bench run"):
        load_records(tmp_path)
    with pytest.raises(SslBenchError, match="does not exist"):
        load_records(tmp_path / "nowhere")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.json").write_text("{")
    with pytest.raises(SslBenchError, match="no result records"):
        load_records(tmp_path)


def test_partial_state_and_hidden_files_are_not_records(tmp_path):
    voc(tmp_path, "a", 50.0, 60.0)
    (tmp_path / "a" / ".partial").mkdir()
    (tmp_path / "a" / ".partial" / "voc07_svm-abc.json").write_text('{"tap:res5": {}}')
    (tmp_path / "a" / ".voc07_svm.json.x.tmp.json").write_text("{")
    warnings: list[str] = []
    records = load_records(tmp_path, warn=warnings.append)
    assert not warnings and len(records.records) == 1


def test_artifacts_folders_are_never_read_as_records(tmp_path):
    path = voc(tmp_path, "a", 50.0, 60.0)
    artifacts = tmp_path / "a" / "finetune-0123abcd.artifacts"
    (artifacts / "tensorboard" / "deep").mkdir(parents=True)
    (artifacts / "predictions.json").write_text(json.dumps({"000005": [1, 2]}))
    (artifacts / "tensorboard" / "deep" / "summary.json").write_text("{broken")
    (artifacts / "tensorboard" / "copy.json").write_text(path.read_text())  # even a record-shaped file
    warnings: list[str] = []
    records = load_records(tmp_path, warn=warnings.append)
    assert not warnings and not records.skipped and list(records.records) == [str(path)]


def test_differing_configs_are_separate_variants_never_averaged(tmp_path):
    voc(tmp_path, "a", 50.0, 60.0, config={"costs": "vissl", "folds": 3})
    voc(tmp_path, "a", 52.0, 64.0, config={"costs": "fair", "folds": 3}, file="voc07_svm-1234.json")
    voc(tmp_path, "b", 40.0, 45.0, config={"costs": "vissl", "folds": 3})
    write_record(tmp_path, "a", "knn", {"res5avg": {"top1_k20": 70.0}}, "top1_k20", dataset="folder")
    records = load_records(tmp_path)
    assert list(records.variants) == ["knn", "voc07_svm[costs=fair]", "voc07_svm[costs=vissl]"]
    res5 = records.frame[(records.frame["tap"] == "res5") & (records.frame["metric"] == "mAP")]
    by_variant = res5.groupby("variant")["value"].apply(sorted).to_dict()
    assert by_variant == {"voc07_svm[costs=fair]": [64.0], "voc07_svm[costs=vissl]": [45.0, 60.0]}
    assert records.variants["voc07_svm[costs=fair]"]["config"] == {"costs": "fair", "folds": 3}


def test_dataset_differences_split_variants_but_the_run_seed_does_not(tmp_path):
    write_record(tmp_path, "a", "knn", {"res5avg": {"top1_k20": 70.0}}, "top1_k20", dataset="folder")
    write_record(tmp_path, "a", "knn", {"res5avg": {"top1_k20": 80.0}}, "top1_k20", dataset="fashion_mnist",
                 file="knn-1.json")
    write_record(tmp_path, "b", "knn", {"res5avg": {"top1_k20": 90.0}}, "top1_k20", dataset="folder", seed=1)
    frame = load_records(tmp_path).frame
    assert set(frame["variant"]) == {"knn[dataset=fashion_mnist]", "knn[dataset=folder]"}
    assert sorted(frame[frame["variant"] == "knn[dataset=folder]"]["checkpoint"]) == ["a", "b"]


def test_long_differences_fall_back_to_a_digest_label(tmp_path):
    write_record(tmp_path, "a", "knn", {"res5avg": {"top1_k20": 70.0}}, "top1_k20",
                 config={"ks": list(range(1, 40))})
    write_record(tmp_path, "a", "knn", {"res5avg": {"top1_k20": 80.0}}, "top1_k20",
                 config={"ks": list(range(2, 40))}, file="knn-1.json")
    labels = sorted(load_records(tmp_path).variants)
    assert len(labels) == 2 and all(label.startswith("knn[") and len(label) == len("knn[12345678]")
                                    for label in labels)


def test_records_of_one_variant_with_other_taps_merge_and_the_newer_wins(tmp_path):
    write_record(tmp_path, "a", "knn", {"res4": {"top1_k20": 50.0}, "res5avg": {"top1_k20": 70.0}}, "top1_k20",
                 created="2024-01-01T00:00:00+00:00")
    newer = write_record(tmp_path, "a", "knn", {"res5avg": {"top1_k20": 75.0}, "res3": {"top1_k20": 40.0}},
                         "top1_k20", file="knn-1.json", created="2024-02-01T00:00:00+00:00")
    warnings: list[str] = []
    records = load_records(tmp_path, warn=warnings.append)
    values = records.frame.set_index("tap")["value"].to_dict()
    assert values == {"res3": 40.0, "res4": 50.0, "res5avg": 75.0}
    assert len(warnings) == 1 and str(newer) in warnings[0]
    assert records.paths("a", "knn")[-1] == str(newer)


def test_several_directories_and_runner_records(tmp_path, folder_root):
    from benchmark.runner import RunOptions, run

    record, _ = run(RunOptions(checkpoint="random:resnet18_cifar", protocol="knn", dataset="folder",
                               data_root=folder_root, taps=("res5avg",), results_dir=tmp_path / "one",
                               overrides={"ks": "1,3"}, name="rand"))
    voc(tmp_path / "two", "other", 50.0, 60.0)
    records = load_records([tmp_path / "one", tmp_path / "two"])
    frame = records.frame[records.frame["checkpoint"] == "rand"]
    assert {(r.tap, r.metric): r.value for r in frame.itertuples()} == {
        ("res5avg", metric): value for metric, value in record["metrics"]["res5avg"].items()}
    assert frame["primary"].sum() == 1 and frame.loc[frame["primary"], "metric"].item() == "top1_k1"
