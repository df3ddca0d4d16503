"""Tables from records: numbers, marks, variants, references and the four renderers."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_records import voc, write_record

from benchmark.bootstrap import N_BOOT, SEED, Bootstrap, bootstrap_interval, evidence_for, stored_statistics
from benchmark.results import RecordArrays
from reports.records import load_records
from reports.references import REFERENCES, references_for
from reports.tables import protocol_tables, summary_table, to_csv, to_html, to_latex, to_markdown
from reports.uncertainty import Uncertainty
from tests.test_published import claim_published


@pytest.fixture(scope="module")
def runner_results(tmp_path_factory, folder_root, voc_root) -> Path:
    """Real records on generated data: knn (two configs) and voc07_svm for two checkpoint names.

    Both names are the same seeded random network, so the feature cache serves the second.
    """
    from benchmark.runner import RunOptions, run

    results = tmp_path_factory.mktemp("results")
    common = {"checkpoint": "random:resnet18_cifar", "results_dir": results,
              "cache_dir": tmp_path_factory.mktemp("features"), "taps": ("res4", "res5avg")}
    for name in ("rand", "twin"):
        run(RunOptions(name=name, protocol="knn", dataset="folder", data_root=folder_root,
                       overrides={"ks": "1,3"}, **common))
        run(RunOptions(name=name, protocol="voc07_svm", data_root=voc_root,
                       overrides={"folds": "2", "custom_costs": "0.1,1"}, **common))
    run(RunOptions(name="twin", protocol="knn", dataset="folder", data_root=folder_root,
                   overrides={"ks": "1,3", "temperature": "0.1"}, **common))
    return results


def test_tables_hold_the_records_numbers_and_keep_configs_apart(runner_results):
    records = load_records(runner_results)
    tables = {t.variant: t for t in protocol_tables(records)}
    assert set(tables) == {"knn[temperature=0.07]", "knn[temperature=0.1]", "voc07_svm"}
    files = [p for p in runner_results.rglob("*.json") if ".partial" not in p.parts]
    assert len(files) == len(records.records) == 5
    for path in files:
        record = json.loads(path.read_text())
        variant = records.frame.loc[records.frame["path"] == str(path), "variant"].iloc[0]
        table, metric = tables[variant], record["protocol"]["primary_metric"]
        assert table.metric == metric
        for tap, values in record["metrics"].items():
            assert table.values.loc[record["checkpoint"]["name"], tap] == values[metric]
    assert set(tables["knn[temperature=0.1]"].values.index) == {"twin"}

    summary = summary_table(records)
    assert list(summary.values.columns) == list(tables)
    for variant, table in tables.items():
        for name in table.values.index:
            assert summary.values.loc[name, variant] == table.values.loc[name].max()
            assert summary.cell_notes.loc[name, variant] == table.values.loc[name].idxmax()


def test_summary_intervals_come_from_the_per_image_scores(runner_results):
    records = load_records(runner_results)
    summary = summary_table(records, n_boot=200, seed=3)
    for name in ("rand", "twin"):
        path = records.paths(name, "voc07_svm")[-1]
        tap = summary.cell_notes.loc[name, "voc07_svm"]
        evidence = evidence_for(records.records[path], tap, "mAP", RecordArrays(path, records.records[path]))
        assert evidence.point() == pytest.approx(summary.values.loc[name, "voc07_svm"], abs=0.05)
        assert summary.intervals.loc[name, "voc07_svm"] == bootstrap_interval(evidence, 200, 3)
    assert "200 resamples, seed 3" in summary.caption


def test_stored_bootstrap_statistics_equal_resampling_the_stored_scores(runner_results):
    records = load_records(runner_results)
    checked = 0
    for path, record in records.records.items():
        arrays = RecordArrays(path, record)
        for tap, by_metric in record["bootstrap"]["entries"].items():
            for metric in by_metric:
                stored = stored_statistics(record, tap, metric, N_BOOT, SEED, arrays)
                fresh = Bootstrap(N_BOOT, SEED).statistics(evidence_for(record, tap, metric, arrays))
                np.testing.assert_array_equal(stored.stats, fresh)
                assert stored.point() == pytest.approx(record["metrics"][tap][metric], abs=1e-9)
                checked += 1
    assert checked == 3 * 2 * 4 + 2  # knn: top-1/5 at K=1, 3 of both taps of 3 records; voc07_svm: best tap of 2


def test_a_missing_side_file_costs_the_marks_not_the_numbers(runner_results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(runner_results, copy)
    record_path = copy / "rand" / "voc07_svm.json"
    next((copy / "rand").glob("voc07_svm.*.npz")).unlink()
    warnings: list[str] = []
    records = load_records(copy)
    summary = summary_table(records, uncertainty=Uncertainty(records, warn=warnings.append))
    assert summary.values.loc["rand", "voc07_svm"] == json.loads(record_path.read_text())["metrics"][
        summary.cell_notes.loc["rand", "voc07_svm"]]["mAP"]
    assert summary.intervals.loc["rand", "voc07_svm"] is None and summary.intervals.loc["twin", "voc07_svm"]
    assert len(warnings) == 1 and str(record_path) in warnings[0] and "is missing" in warnings[0]


def synthetic(tmp_path: Path) -> Path:
    voc(tmp_path, "a", 50.0, 60.0)
    voc(tmp_path, "b", 55.0, 52.0)
    write_record(tmp_path, "a", "surface_normals", {"res5": {"median": 15.0}, "res4": {"median": 18.0}},
                 "median", dataset="nyuv2", declared={"median": False})
    write_record(tmp_path, "b", "surface_normals", {"res5": {"median": 14.0}, "res4": {"median": 13.0}},
                 "median", dataset="nyuv2", declared={"median": False})
    claim_published(tmp_path)
    return tmp_path


def test_best_tap_per_row_and_best_checkpoint_per_column_are_bold(tmp_path):
    records = load_records(synthetic(tmp_path))
    tables = {t.variant: t for t in protocol_tables(records)}
    svm = tables["voc07_svm"]
    assert svm.bold.loc["a"].to_dict() == {"res4": False, "res5": True}
    assert svm.bold.loc["b"].to_dict() == {"res4": True, "res5": False}
    assert svm.not_worse["res4"].to_dict() == {"a": False, "b": True}  # the top of each column
    normals = tables["surface_normals"]
    assert not normals.higher_is_better
    assert normals.bold.loc["a"].to_dict() == {"res4": False, "res5": True}
    assert normals.bold.loc["b"].to_dict() == {"res4": True, "res5": False}

    summary = summary_table(records)
    assert summary.values.loc["b", "voc07_svm"] == 55.0 and summary.cell_notes.loc["b", "voc07_svm"] == "res4"
    assert summary.bold["voc07_svm"].to_dict() == {"a": True, "b": False}
    assert summary.values.loc["b", "surface_normals"] == 13.0
    assert summary.bold["surface_normals"].to_dict() == {"a": False, "b": True}
    markdown = to_markdown(summary)
    assert "| a | 15.00 (res5) | **60.00 (res5)**† |" in markdown
    assert "Bold: best checkpoint of each column" in markdown


def knn_with_images(root: Path, name: str, correct: np.ndarray) -> None:
    write_record(root, name, "knn", {"res5avg": {"top1_k20": 100 * float(np.mean(correct))}}, "top1_k20",
                 dataset="fashion_mnist",
                 details={"per_image": {"res5avg": {"k": 20, "correct_top1": correct.astype(int).tolist()}}})


def test_entries_not_significantly_worse_than_the_column_best_get_a_dagger(tmp_path):
    rng = np.random.default_rng(0)
    best = rng.random(400) < 0.8
    knn_with_images(tmp_path, "best", best)
    tie = best.copy()
    tie[np.flatnonzero(best)[:2]] = False  # two images fewer: not significantly worse
    knn_with_images(tmp_path, "tie", tie)
    knn_with_images(tmp_path, "worse", best & (rng.random(400) < 0.7))
    for table in (protocol_tables(load_records(tmp_path))[0], summary_table(load_records(tmp_path))):
        column = table.values.columns[0]
        assert table.not_worse[column].to_dict() == {"best": True, "tie": True, "worse": False}
        lo, hi = table.intervals.loc["worse", column]
        assert lo < table.values.loc["worse", column] < hi
        assert "[" in to_markdown(table) and "paired bootstrap" in table.caption


def test_lowshot_gives_one_table_per_k_with_mean_and_std(tmp_path):
    for name, shift in (("a", 0.0), ("b", 5.0)):
        metrics = {tap: {f"mAP_k{k}_{stat}": (40.0 + k + shift + bonus if stat == "mean" else 1.0 / k)
                         for k in (1, 4, 16) for stat in ("mean", "std", "min", "max")}
                   for tap, bonus in (("res4", 1.0), ("res5", 0.0))}
        write_record(tmp_path, name, "lowshot", metrics, "mAP_k16_mean")
    tables = protocol_tables(load_records(tmp_path))
    assert [t.metric for t in tables] == ["mAP_k1_mean", "mAP_k4_mean", "mAP_k16_mean"]
    k4 = tables[1]
    assert k4.values.loc["b", "res4"] == 50.0 and k4.spread.loc["b", "res4"] == 0.25
    assert "| a | **45.00 ± 0.25** | 44.00 ± 0.25 |" in to_markdown(k4)
    assert "| b | **50.00 ± 0.25**† | 49.00 ± 0.25† |" in to_markdown(k4)
    summary = summary_table(load_records(tmp_path))
    assert summary.values.loc["a", "lowshot"] == 57.0 and summary.spread.loc["a", "lowshot"] == 1 / 16


def test_csv_round_trips_to_the_same_numbers(tmp_path):
    records = load_records(synthetic(tmp_path))
    for table in [*protocol_tables(records, references=True), summary_table(records, references=True)]:
        back = pd.read_csv(io.StringIO(to_csv(table)), index_col=0)
        pd.testing.assert_frame_equal(back[list(table.values.columns)], table.values, check_names=False,
                                      check_exact=True)
        assert back["published"].tolist() == [r in table.reference_rows for r in table.values.index]


def test_latex_escapes_names_and_uses_booktabs(tmp_path):
    voc(tmp_path, "my_ckpt&v1%", 50.0, 60.0)
    latex = to_latex(protocol_tables(load_records(tmp_path))[0])
    assert r"my\_ckpt\&v1\%" in latex and "my_ckpt&v1%" not in latex
    assert r"\toprule" in latex and r"\bottomrule" in latex and r"\textbf{60.00}" in latex
    assert r"voc07\_svm" in latex


def test_html_escapes_every_name(tmp_path):
    voc(tmp_path, "<script>alert(1)</script>", 50.0, 60.0)
    voc(tmp_path, "plain", 40.0, 45.0, config={"costs": "<b>fair</b>"}, file="voc07_svm-x.json")
    records = load_records(tmp_path)
    for table in [*protocol_tables(records, references=True), summary_table(records, references=True)]:
        page = to_html(table)
        assert "<script" not in page.lower() and "<b>" not in page
        assert "&lt;script&gt;" in page or "plain" in page
        assert page.startswith("<table") and page.count("<tr") == len(table.values.index) + 1


def test_markdown_keeps_its_columns_whatever_the_names(tmp_path):
    voc(tmp_path, "a|b_c*", 50.0, 60.0)
    markdown = to_markdown(protocol_tables(load_records(tmp_path))[0])
    row = next(line for line in markdown.splitlines() if line.startswith("| a"))
    assert len(re.findall(r"(?<!\\)\|", row)) == 4 and r"a\|b\_c\*" in row


def test_references_only_when_asked_and_with_their_source(tmp_path):
    records = load_records(synthetic(tmp_path))
    plain = {t.variant: t for t in protocol_tables(records)}["voc07_svm"]
    assert not plain.reference_rows and "Goyal" not in to_markdown(plain) + to_html(plain) + to_csv(plain)

    table = {t.variant: t for t in protocol_tables(records, references=True)}["voc07_svm"]
    label = "ImageNet supervised (Goyal et al. 2019)"
    assert label in table.reference_rows and table.values.loc[label, "res5"] == 87.95
    assert list(table.values.columns) == ["conv1", "res2", "res3", "res4", "res5"]
    assert "arXiv 1905.01235" in table.sources[label] and "arXiv 1905.01235" in table.caption
    assert not table.not_worse.loc[sorted(table.reference_rows)].to_numpy().any()  # never the column's best
    assert table.not_worse.loc["a", "res5"]
    assert 'class="published"' in to_html(table) and "published</span>" in to_html(table)
    assert f"*{label}* (published)" in to_markdown(table)
    assert r"\textit{ImageNet supervised (Goyal et al. 2019)} (published)" in to_latex(table)
    assert "Random init RN50 (OpenSelfSup zoo)" not in table.values.index  # best-tap-only rows: summary only

    summary = summary_table(records, references=True)
    assert summary.values.loc["Random init RN50 (OpenSelfSup zoo)", "voc07_svm"] == 30.54
    assert summary.values.loc[label, "voc07_svm"] == 87.95 and summary.cell_notes.loc[label, "voc07_svm"] == "res5"
    normals = summary.values.loc["Jigsaw YFCC-100M (Goyal et al. 2019)", "surface_normals"]
    assert normals == 13.1  # lower is better: the published median error


def test_reference_rows_cover_every_published_table():
    assert len(references_for("voc07_svm", "mAP", "voc2007")) == 7
    assert references_for("voc07_svm", "mAP", "places205") == []
    assert [r.values["res5"] for r in references_for("lowshot")] == [52.99, 63.55, 73.70, 78.79, 81.76, 83.75,
                                                                     85.18, 85.97]
    assert len(references_for("places205_linear", "top1")) == 5
    assert references_for("knn") == []
    assert {r.metric for r in references_for("detection")} == {"AP", "AP50", "AP75"}
    assert len(references_for("detection", "AP50")) == 5 * 2 + 6  # Goyal: trained on VOC07 and on VOC07+12
    assert len(references_for("surface_normals", "median")) == 6
    assert len(references_for("linear", "top1")) == 7 and len(references_for("semi_supervised")) == 3
    assert all(r.source and r.checkpoint and r.values for r in REFERENCES)


def test_limited_and_partly_random_runs_are_named_where_their_numbers_appear(tmp_path):
    voc(tmp_path, "full", 50.0, 60.0)
    for name, change in (("subset", {"dataset": {"limit": 40, "limit_rule": "class-balanced", "limit_seed": 3}}),
                         ("partial", {"checkpoint": {"missing_keys": 12, "matched_keys": 110}})):
        path = voc(tmp_path, name, 40.0, 45.0)
        record = json.loads(path.read_text())
        for section, fields in change.items():
            record[section].update(fields)
        path.write_text(json.dumps(record))
    records = load_records(tmp_path)
    expected = ("Not full-benchmark runs: partial: 12 of 122 trunk keys left at random init (--allow-partial); "
                "subset: --limit 40 images per split, class-balanced, seed 3.")
    for table in (*protocol_tables(records), summary_table(records)):
        assert expected in table.caption
        assert expected in to_markdown(table) and "full:" not in table.caption
    plain = load_records(voc(tmp_path / "plain", "full", 50.0, 60.0).parent.parent)
    assert "Not full-benchmark" not in summary_table(plain).caption
