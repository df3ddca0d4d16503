"""Directions declared by the records and whole-network results, through tables, the report and the gate.

The surface-normals metric here is called plain "median", so only its declaration (higher_is_better false)
can tell that lower is better; the fine-tuning records report under "network" instead of a tap.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from test_records import voc, write_record

from reports.records import load_records
from reports.regress import compare, entries_of, read_baseline, run_regress, write_baseline
from reports.report import build_report
from reports.tables import protocol_tables, summary_table, to_markdown

FINETUNE = {"top1": True, "top5": True, "top1_std": None}  # top1_std: a spread over runs, never ranked or gated
NORMALS = {"median": False, "within_11.25": True}


def finetune(root: Path, name: str, top1: float, top5: float = 90.0) -> Path:
    return write_record(root, name, "finetune", {"network": {"top1": top1, "top5": top5, "top1_std": 0.3}}, "top1",
                        dataset="folder", declared=FINETUNE)


def normals(root: Path, name: str, median: float, within: float = 40.0) -> Path:
    return write_record(root, name, "surface_normals", {"network": {"median": median, "within_11.25": within}},
                        "median", dataset="nyuv2", declared=NORMALS)


def results(root: Path) -> Path:
    """Two checkpoints: a schema-1 voc07_svm record each, and schema-2 fine-tuning and surface-normals records."""
    voc(root, "a", 50.0, 60.0)
    voc(root, "b", 55.0, 52.0)
    finetune(root, "a", 70.0)
    finetune(root, "b", 72.0)
    normals(root, "a", 14.0, 40.0)
    normals(root, "b", 12.0, 38.0)
    return root


def test_the_declared_lower_is_better_median_is_marked_at_its_lowest(tmp_path):
    records = load_records(results(tmp_path))
    tables = {t.variant: t for t in protocol_tables(records)}
    table = tables["surface_normals"]
    assert table.higher_is_better is False and list(table.values.columns) == ["network"]
    assert table.not_worse["network"].to_dict() == {"a": False, "b": True}  # the column's best: the lowest
    assert "Lower is better for median." in table.caption
    assert tables["finetune"].not_worse["network"].to_dict() == {"a": False, "b": True}

    summary = summary_table(records)
    assert summary.bold["surface_normals"].to_dict() == {"a": False, "b": True}
    assert summary.bold["finetune"].to_dict() == {"a": False, "b": True}
    assert summary.bold["voc07_svm"].to_dict() == {"a": True, "b": False}
    assert summary.cell_notes.loc["b", "surface_normals"] == "network"
    markdown = to_markdown(summary)
    assert "| a | 70.00 (network) | 14.00 (network) | **60.00 (res5)**† |" in markdown
    assert "| b | **72.00 (network)**† | **12.00 (network)**† | 55.00 (res4) |" in markdown
    assert "Lower is better for surface_normals." in summary.caption


def test_a_schema_1_record_of_the_same_name_would_guess_the_other_way(tmp_path):
    write_record(tmp_path, "a", "surface_normals", {"network": {"median": 14.0}}, "median", dataset="nyuv2")
    write_record(tmp_path, "b", "surface_normals", {"network": {"median": 12.0}}, "median", dataset="nyuv2")
    assert summary_table(load_records(tmp_path)).bold["surface_normals"].to_dict() == {"a": True, "b": False}


def test_whole_network_records_go_through_md_csv_and_html(tmp_path):
    out = tmp_path / "report"
    warnings: list[str] = []
    written = build_report([results(tmp_path / "results")], out, formats=["md", "csv", "html"], warn=warnings.append)
    assert warnings == []
    names = {str(p.relative_to(out)) for p in written}
    assert {"tables/finetune_top1.csv", "tables/surface_normals_median.csv", "tables/summary.csv"} <= names
    # a tap profile needs taps: the whole-network variants get none
    assert sorted(n for n in names if n.startswith("plots/")) == ["plots/taps-voc07_svm.png"]
    top1 = pd.read_csv(out / "tables" / "finetune_top1.csv", index_col="checkpoint")
    assert top1["network"].to_dict() == {"a": 70.0, "b": 72.0}
    summary = pd.read_csv(out / "tables" / "summary.csv", index_col="checkpoint")
    assert summary.loc["b", "surface_normals"] == 12.0 and summary.loc["b", "surface_normals tap"] == "network"
    md = (out / "report.md").read_text()
    assert "### finetune: top1" in md and "| checkpoint | network |" in md
    assert "| b | **12.00**† |" in md  # the only column: its row's best, and the column's lowest
    html = (out / "report.html").read_text()
    assert '<th scope="col">network</th>' in html and "<strong>12.00 (network)</strong>" in html


@pytest.fixture
def baseline(tmp_path) -> Path:
    base = tmp_path / "base"
    finetune(base, "a", 70.0)
    normals(base, "a", 14.0, 40.0)
    return write_baseline(load_records([base]), tmp_path / "baseline.json", tolerance=0.5)


def test_the_baseline_keeps_declared_directions_and_leaves_spreads_out(baseline):
    entries = {(e.tap, e.metric): e.higher_is_better for e in read_baseline(baseline).entries}
    assert entries == {("network", "top1"): True, ("network", "top5"): True, ("network", "median"): False,
                       ("network", "within_11.25"): True}


@pytest.mark.parametrize("median, status, code", [(14.6, "dropped", 1), (14.4, "ok", 0), (13.0, "improved", 0)])
def test_a_rise_of_the_declared_error_beyond_tolerance_fails_the_gate(tmp_path, baseline, median, status, code):
    new = tmp_path / "new"
    finetune(new, "a", 70.0)
    normals(new, "a", median, 40.0)
    comparison = compare(read_baseline(baseline), load_records([new]))
    verdicts = {row.metric: row.status for row in comparison.rows}
    assert verdicts == {"top1": "ok", "top5": "ok", "median": status, "within_11.25": "ok"}
    assert "lower is better" in next(row.note for row in comparison.rows if row.metric == "median")
    out: list[str] = []
    junit = tmp_path / "junit.xml"
    assert run_regress(baseline, [new], junit_path=junit, emit=out.append) == code
    failures = ET.parse(junit).getroot().iter("failure")
    assert [f.get("type") for f in failures] == (["dropped"] if code else [])


def test_a_drop_of_the_whole_network_top1_fails_and_names_network(tmp_path, baseline):
    new = tmp_path / "new"
    finetune(new, "a", 69.0)
    normals(new, "a", 14.0, 40.0)
    out: list[str] = []
    assert run_regress(baseline, [new], emit=out.append) == 1
    assert "| dropped | a | finetune | network | top1 | 70.00 | 69.00 | -1.00 |" in out[0]
    assert all(entry.tap == "network" for entry in entries_of(load_records([new])))


def test_a_primary_without_direction_gets_no_marks(tmp_path):
    for name, value in (("a", 1.0), ("b", 2.0)):  # schema 1: a name ending in _std is guessed to be a spread
        write_record(tmp_path, name, "spread", {"res4": {"top1_std": value}, "res5": {"top1_std": value + 1}},
                     "top1_std")
    records = load_records(tmp_path)
    for table in (protocol_tables(records)[0], summary_table(records)):
        assert not table.bold.to_numpy().any() and not table.not_worse.to_numpy().any()
        assert "No marks for" in table.caption
    assert summary_table(records).cell_notes["spread"].to_dict() == {"a": "res4", "b": "res4"}  # first in tap order
    assert entries_of(records) == []
