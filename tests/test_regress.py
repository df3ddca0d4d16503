"""The regression gate on synthetic result records: verdicts, baseline files, Markdown, JUnit, exit codes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.config import config_digest
from benchmark.errors import SslBenchError
from reports.records import load_records
from reports.regress import (MARKDOWN_ROWS, compare, entries_of, read_baseline, run_regress, to_junit, to_markdown,
                             write_baseline)

KNN_CONFIG = {"ks": [10, 20], "temperature": 0.07, "normalize": True}
SVM_CONFIG = {"costs": "vissl", "folds": 3}


def write_record(root: Path, checkpoint: str, protocol: str, metrics: dict[str, dict[str, float]],
                 config: dict | None = None, primary: str = "top1_k20", dataset_digest: str = "d" * 64,
                 sha256: str = "a" * 64, seed: int = 0, created: str = "2026-01-01T00:00:00+00:00") -> Path:
    """A record with the runner's keys at RESULTS/<checkpoint>/<protocol>.json."""
    config = dict(KNN_CONFIG if config is None else config)
    record = {
        "schema_version": 1,
        "checkpoint": {"name": checkpoint, "spec": f"{checkpoint}.pth", "path": f"{checkpoint}.pth",
                       "sha256": sha256, "format": "native", "arch": "resnet18"},
        "protocol": {"name": protocol, "version": "1", "primary_metric": primary},
        "config": config,
        "config_digest": config_digest({"config": config, "sha": sha256, "data": dataset_digest, "seed": seed}),
        "dataset": {"name": "synthetic", "digest": dataset_digest, "splits": {"train": 8, "test": 8},
                    "limit": None, "root": "/data"},
        "taps": list(metrics), "preprocessing": {}, "metrics": metrics, "details": {}, "seed": seed,
        "versions": {"ssl_bench": "0"}, "device": {"type": "cpu"}, "timings": {"total_s": 1.0},
        "created": created, "resumed_pieces": 0,
    }
    path = root / checkpoint / f"{protocol}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def knn(top1: float = 60.0, top5: float = 90.0) -> dict[str, dict[str, float]]:
    return {"res5avg": {"top1_k20": top1, "top5_k20": top5}, "res4": {"top1_k20": 50.0, "top5_k20": 80.0}}


@pytest.fixture
def baseline(tmp_path) -> Path:
    """A baseline of two checkpoints x knn (2 taps x 2 metrics), tolerance 0.5."""
    results = tmp_path / "base_results"
    write_record(results, "ckpt_a", "knn", knn())
    write_record(results, "ckpt_b", "knn", knn(70.0, 95.0))
    return write_baseline(load_records([results]), tmp_path / "baseline.json", tolerance=0.5)


def regress(baseline: Path, results: Path, **kwargs) -> tuple[int, str]:
    out: list[str] = []
    code = run_regress(baseline, [results], emit=out.append, **kwargs)
    return code, "".join(out)


def test_identical_results_pass(tmp_path, baseline):
    results = tmp_path / "results"
    write_record(results, "ckpt_a", "knn", knn())
    write_record(results, "ckpt_b", "knn", knn(70.0, 95.0))
    code, markdown = regress(baseline, results, junit_path=tmp_path / "r.xml")
    assert code == 0
    assert markdown.splitlines()[0].startswith("ssl-bench regress: PASSED: 8 compared, 0 failed; 8 ok")
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert (suite.get("name"), suite.get("tests"), suite.get("failures")) == ("ssl-bench regress", "8", "0")
    assert min(case.get("name") for case in suite.iter("testcase")) == "ckpt_a/knn/res4/top1_k20"


def test_one_point_drop_beyond_tolerance_fails_everywhere(tmp_path, baseline):
    results = tmp_path / "results"
    write_record(results, "ckpt_a", "knn", knn(top1=59.0))
    write_record(results, "ckpt_b", "knn", knn(70.0, 95.0))
    code, markdown = regress(baseline, results, junit_path=tmp_path / "r.xml")
    assert code == 1
    lines = markdown.splitlines()
    assert lines[0].startswith("ssl-bench regress: FAILED: 8 compared, 1 failed (1 dropped); 7 ok")
    failures = lines[lines.index("### Failures"):lines.index("### Passing and new")]
    assert [line for line in failures if line.startswith("| dropped")] == [
        "| dropped | ckpt_a | knn | res5avg | top1_k20 | 60.00 | 59.00 | -1.00 | allowed 0.50 (tolerance 0.5) |"]
    root = ET.parse(tmp_path / "r.xml").getroot()
    assert root.find("testsuite").get("failures") == "1" and root.get("failures") == "1"
    failed = [case for case in root.iter("testcase") if case.find("failure") is not None]
    assert [case.get("name") for case in failed] == ["ckpt_a/knn/res5avg/top1_k20"]
    assert failed[0].find("failure").get("message").startswith("dropped: 60.00 -> 59.00 (-1.00 points)")


@pytest.mark.parametrize("value, status, code", [
    (59.5, "ok", 0),  # a drop of exactly the tolerance passes
    (59.6, "ok", 0), (60.4, "ok", 0),
    (60.6, "improved", 0),
    (59.4, "dropped", 1),
])
def test_verdict_by_change(tmp_path, baseline, value, status, code):
    results = tmp_path / "results"
    write_record(results, "ckpt_a", "knn", knn(top1=value))
    write_record(results, "ckpt_b", "knn", knn(70.0, 95.0))
    comparison = compare(read_baseline(baseline), load_records([results]))
    verdicts = {row.name: row.status for row in comparison.rows}
    assert verdicts.pop("ckpt_a/knn/res5avg/top1_k20") == status
    assert set(verdicts.values()) == {"ok"}
    assert comparison.failed == (code == 1)
    assert regress(baseline, results)[0] == code


def test_improvement_passes_and_suggests_a_new_baseline(tmp_path, baseline):
    results = tmp_path / "results"
    write_record(results, "ckpt_a", "knn", knn(top1=63.0))
    write_record(results, "ckpt_b", "knn", knn(70.0, 95.0))
    code, markdown = regress(baseline, results)
    assert code == 0
    assert "| improved | ckpt_a | knn | res5avg | top1_k20 | 60.00 | 63.00 | +3.00 |" in markdown
    assert "--write-baseline" in markdown


def test_missing_result_fails(tmp_path, baseline):
    results = tmp_path / "results"
    write_record(results, "ckpt_a", "knn", {"res5avg": knn()["res5avg"]})  # res4 not run
    code, markdown = regress(baseline, results)
    assert code == 1
    assert "8 compared, 6 failed (6 missing); 2 ok" in markdown.splitlines()[0]
    assert "| missing | ckpt_a | knn | res4 | top1_k20 | 50.00 |  |  |" in markdown
    assert "| missing | ckpt_b | knn | res5avg |" in markdown


def test_changed_config_fails_and_names_the_key(tmp_path, baseline):
    results = tmp_path / "results"
    write_record(results, "ckpt_a", "knn", knn(), config={**KNN_CONFIG, "temperature": 0.1})
    write_record(results, "ckpt_b", "knn", knn(70.0, 95.0))
    code, markdown = regress(baseline, results, junit_path=tmp_path / "r.xml")
    assert code == 1
    assert "4 failed (4 config_changed)" in markdown.splitlines()[0]
    assert "| config_changed | ckpt_a | knn | res5avg | top1_k20 | 60.00 | 60.00 | +0.00 | settings differ: " \
           "temperature: 0.07 -> 0.1 |" in markdown
    assert "ckpt_b" not in markdown.split("### Passing")[0]
    messages = [f.get("message") for f in ET.parse(tmp_path / "r.xml").getroot().iter("failure")]
    assert len(messages) == 4 and all("temperature: 0.07 -> 0.1" in m for m in messages)


def test_new_weights_and_data_changes(tmp_path, baseline):
    """Another checkpoint file under the same name is what a gate compares; other data is a changed setting."""
    results = tmp_path / "results"
    write_record(results, "ckpt_a", "knn", knn(), sha256="f" * 64)
    write_record(results, "ckpt_b", "knn", knn(70.0, 95.0), dataset_digest="e" * 64, seed=1)
    comparison = compare(read_baseline(baseline), load_records([results]))
    notes = {row.status: row.note for row in comparison.rows}
    assert comparison.counts() == {"ok": 4, "config_changed": 4}
    assert notes["config_changed"] == ("settings differ: dataset_digest: dddddddddddd... -> eeeeeeeeeeee...; "
                                       "seed: 0 -> 1")


def test_results_not_in_the_baseline_are_new_and_do_not_fail(tmp_path, baseline):
    results = tmp_path / "results"
    write_record(results, "ckpt_a", "knn", knn())
    write_record(results, "ckpt_b", "knn", knn(70.0, 95.0))
    write_record(results, "ckpt_c", "voc07_svm", {"res5": {"mAP": 40.0}}, config=SVM_CONFIG, primary="mAP")
    code, markdown = regress(baseline, results, junit_path=tmp_path / "r.xml")
    assert code == 0
    assert "8 compared, 0 failed; 8 ok, 1 new" in markdown.splitlines()[0]
    assert "| new | ckpt_c | voc07_svm | res5 | mAP |  | 40.00 |  | not in the baseline |" in markdown
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert suite.get("tests") == "8" and "new: ckpt_c/voc07_svm/res5/mAP = 40.00" in suite.find("system-out").text


def lowshot(mean: float, std: float) -> dict[str, dict[str, float]]:
    return {"res5": {"mAP_k8_mean": mean, "mAP_k8_std": std, "mAP_k8_min": mean - std, "mAP_k8_max": mean + std,
                     "mAP_k1_mean": 20.0, "mAP_k1_std": 0.1, "mAP_k1_min": 19.9, "mAP_k1_max": 20.1}}


@pytest.mark.parametrize("value, status", [(48.1, "ok"), (47.9, "dropped"), (52.1, "improved")])
def test_multi_sample_metric_allows_k_std(tmp_path, value, status):
    """Baseline std 1.0, k = 2: drops up to 2 points pass; k1's std 0.1 gives way to the 0.5 tolerance."""
    base_results, results = tmp_path / "base", tmp_path / "results"
    write_record(base_results, "ckpt", "lowshot", lowshot(50.0, 1.0), config={"ks": [1, 8]}, primary="mAP_k8_mean")
    path = write_baseline(load_records([base_results]), tmp_path / "baseline.json", tolerance=0.5)
    entries = {e.metric: e.std for e in read_baseline(path).entries}
    assert entries == {"mAP_k1_mean": 0.1, "mAP_k8_mean": 1.0}  # _std, _min and _max are folded in
    metrics = lowshot(value, 3.0)
    metrics["res5"]["mAP_k1_mean"] = 19.4
    write_record(results, "ckpt", "lowshot", metrics, config={"ks": [1, 8]}, primary="mAP_k8_mean")
    comparison = compare(read_baseline(path), load_records([results]), k_std=2.0)
    verdicts = {row.metric: (row.status, row.allowance) for row in comparison.rows}
    assert verdicts == {"mAP_k8_mean": (status, 2.0), "mAP_k1_mean": ("dropped", 0.5)}
    assert "2 x std 1.00" in next(r.note for r in comparison.rows if r.metric == "mAP_k8_mean")


def test_lower_is_better_metrics(tmp_path):
    base_results, results = tmp_path / "base", tmp_path / "results"
    metrics = {"res5": {"median_error": 20.0, "within_11.25": 30.0}}
    write_record(base_results, "ckpt", "surface_normals", metrics, config={}, primary="median_error")
    path = write_baseline(load_records([base_results]), tmp_path / "baseline.json", tolerance=0.5)
    write_record(results, "ckpt", "surface_normals", {"res5": {"median_error": 21.0, "within_11.25": 31.0}},
                 config={}, primary="median_error")
    comparison = compare(read_baseline(path), load_records([results]))
    assert {row.metric: row.status for row in comparison.rows} == {"median_error": "dropped",
                                                                   "within_11.25": "improved"}


def test_baseline_file_round_trip(tmp_path, baseline):
    document = json.loads(baseline.read_text())
    assert (document["kind"], document["schema_version"], document["tolerance"]) == ("ssl-bench-baseline", 2, 0.5)
    assert len(document["entries"]) == 8 and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    first = document["entries"][0]
    assert first == {"checkpoint": "ckpt_a", "protocol": "knn", "protocol_version": "1", "variant": "knn",
                     "config_digest": first["config_digest"], "config": KNN_CONFIG, "dataset": "synthetic",
                     "dataset_digest": "d" * 64, "seed": 0, "tap": "res4", "metric": "top1_k20",
                     "higher_is_better": True, "value": 50.0, "std": None, "n_images": 8, "bootstrap": None}
    parsed = read_baseline(baseline)
    assert [e.to_json() for e in parsed.entries] == document["entries"]
    assert list(parsed.entries) == sorted(entries_of(load_records([tmp_path / "base_results"])), key=lambda e: e.key)


def test_tolerance_comes_from_the_baseline_unless_given(tmp_path, baseline):
    results = tmp_path / "results"
    write_record(results, "ckpt_a", "knn", knn(top1=59.0))
    write_record(results, "ckpt_b", "knn", knn(70.0, 95.0))
    assert regress(baseline, results)[0] == 1
    assert regress(baseline, results, tolerance=1.5)[0] == 0
    with pytest.raises(SslBenchError, match="--tolerance must be a number of points >= 0, got -1"):
        regress(baseline, results, tolerance=-1)


def test_write_baseline_through_run_regress(tmp_path):
    results = tmp_path / "results"
    write_record(results, "ckpt_a", "knn", knn())
    code, text = regress(tmp_path / "gate" / "b.json", results, write_baseline=True, tolerance=0.25)
    assert code == 0 and text.startswith(f"ssl-bench regress: wrote baseline {tmp_path / 'gate' / 'b.json'} "
                                         "(4 entries, tolerance 0.25 points)")
    assert read_baseline(tmp_path / "gate" / "b.json").tolerance == 0.25
    assert regress(tmp_path / "gate" / "b.json", results)[0] == 0


@pytest.mark.parametrize("content, message", [
    ('{"kind": "ssl-bench-baseline", "schema_version": 3, "tolerance": 0.5, "entries": []}',
     ("baseline {path} has schema_version 3; this ssl-bench reads 1, 2: regenerate it with "
      "`ssl-bench regress --write-baseline`")),
    ("{not json", "baseline {path} is not JSON"),
    ('{"schema_version": 1, "entries": []}', "baseline {path} is not an ssl-bench baseline"),
    ('{"kind": "ssl-bench-baseline", "schema_version": 1, "tolerance": 0.5, "entries": []}',
     "baseline {path} has no entries"),
    ('{"kind": "ssl-bench-baseline", "schema_version": 1, "tolerance": 0.5, "entries": [{"checkpoint": "a"}]}',
     "baseline {path}: entry 0 has a missing or mistyped 'protocol'"),
])
def test_bad_baseline_files(tmp_path, content, message):
    path = tmp_path / "baseline.json"
    path.write_text(content)
    with pytest.raises(SslBenchError) as info:
        read_baseline(path)
    assert str(info.value).startswith(message.format(path=path)) and "\n" not in str(info.value)


def test_missing_baseline_file_says_how_to_make_one(tmp_path):
    with pytest.raises(SslBenchError, match="does not exist; create it with `ssl-bench regress .*--write-baseline`"):
        read_baseline(tmp_path / "nope.json")


def test_malformed_record_warns_or_fails_under_strict(tmp_path, baseline):
    results = tmp_path / "results"
    write_record(results, "ckpt_a", "knn", knn())
    write_record(results, "ckpt_b", "knn", knn(70.0, 95.0))
    broken = results / "ckpt_c" / "knn.json"
    broken.parent.mkdir()
    broken.write_text('{"schema_version": 1, "metrics": ')
    warnings: list[str] = []
    assert regress(baseline, results, warn=warnings.append)[0] == 0
    assert len(warnings) == 1 and str(broken) in warnings[0]
    with pytest.raises(SslBenchError, match=str(broken)):
        regress(baseline, results, strict=True)


def test_junit_escapes_names_and_stays_valid(tmp_path):
    base_results, results = tmp_path / "base", tmp_path / "results"
    name = 'a<b>&"c\x01'
    write_record(base_results, name, "knn", knn())
    path = write_baseline(load_records([base_results]), tmp_path / "baseline.json")
    write_record(results, name, "knn", knn(top1=10.0))
    comparison = compare(read_baseline(path), load_records([results]))
    root = ET.fromstring(to_junit(comparison).encode())
    assert (root.get("tests"), root.get("failures")) == ("4", "1")
    assert root.find(".//failure/..").get("name") == 'a<b>&"c?/knn/res5avg/top1_k20'


def test_markdown_escapes_pipes_and_collapses_long_tables(tmp_path):
    base_results = tmp_path / "base"
    many = {f"t{i:02d}": {"top1_k20": 50.0} for i in range(MARKDOWN_ROWS + 5)}
    write_record(base_results, "a|b", "knn", many)
    path = write_baseline(load_records([base_results]), tmp_path / "baseline.json")
    comparison = compare(read_baseline(path), load_records([base_results]))
    markdown = to_markdown(comparison)
    assert "### Passing and new (counts)" in markdown
    assert "| a\\|b | knn | 35 |" in markdown
    assert len(markdown.splitlines()) < 10


def test_cli_exit_codes_and_stdout(tmp_path, baseline, capsys):
    results = tmp_path / "results"
    write_record(results, "ckpt_a", "knn", knn(top1=55.0))
    write_record(results, "ckpt_b", "knn", knn(70.0, 95.0))
    junit = tmp_path / "out" / "regress.xml"
    assert main(["regress", "--baseline", str(baseline), "--results", str(results), "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("ssl-bench regress: FAILED") and "| dropped | ckpt_a |" in out
    assert ET.parse(junit).getroot().get("failures") == "1"
    assert main(["regress", "--baseline", str(baseline), "--results", str(results), "--tolerance", "6"]) == 0
    (tmp_path / "v3.json").write_text('{"kind": "ssl-bench-baseline", "schema_version": 3}')
    assert main(["regress", "--baseline", str(tmp_path / "v3.json"), "--results", str(results)]) == 2
    assert "schema_version 3" in capsys.readouterr().err


def test_two_configs_in_the_baseline_match_their_own_results(tmp_path):
    """A baseline with knn at T=0.07 and T=0.1: results of T=0.07 only leave the T=0.1 entries missing."""
    base_results, results = tmp_path / "base", tmp_path / "results"
    other = write_record(base_results, "ckpt", "knn", knn(40.0), config={**KNN_CONFIG, "temperature": 0.1})
    other.rename(other.with_name("knn-other.json"))
    write_record(base_results, "ckpt", "knn", knn())
    path = write_baseline(load_records([base_results]), tmp_path / "baseline.json")
    assert len(read_baseline(path).entries) == 8
    write_record(results, "ckpt", "knn", knn())
    comparison = compare(read_baseline(path), load_records([results]))
    assert comparison.counts() == {"ok": 4, "missing": 4}
    assert {row.baseline for row in comparison.rows if row.status == "missing" and row.tap == "res5avg"} == {40.0, 90.0}
