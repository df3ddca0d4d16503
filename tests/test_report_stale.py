"""`report --out` into a folder of an earlier report: its stale files go, the user's files stay."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.runner import RunOptions, run
from reports.manifest import MANIFEST
from reports.report import build_report


@pytest.fixture(scope="module")
def results(tmp_path_factory, folder_root) -> Path:
    root = tmp_path_factory.mktemp("results")
    run(RunOptions(checkpoint="random:resnet18_cifar", protocol="knn", dataset="folder", data_root=folder_root,
                   taps=("res5avg",), results_dir=root, overrides={"ks": "1,3"}))
    return root


def files(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


def test_a_narrower_report_removes_what_the_earlier_one_wrote_and_nothing_else(tmp_path, results):
    out = tmp_path / "report"
    first = build_report([results], out)
    assert {"report.md", "report.html", "report.tex", "tables/summary.csv", MANIFEST} <= files(out)
    assert files(out) == {p.relative_to(out).as_posix() for p in first}
    (out / "notes.txt").write_text("mine")
    (out / "tables" / "mine.csv").write_text("a,b\n")
    (out / "report.tex").write_text((out / "report.tex").read_text() + "% edited by hand\n")
    second = build_report([results], out, formats=["md"])
    expected = {p.relative_to(out).as_posix() for p in second} | {"notes.txt", "tables/mine.csv", "report.tex"}
    assert files(out) == expected
    assert "report.html" not in files(out) and "tables/summary.csv" not in files(out)
    (out / "tables" / "mine.csv").unlink()
    build_report([results], out, formats=["md", "csv"])
    build_report([results], out, formats=["md"])
    assert not (out / "tables").exists()  # emptied by the removal, so it went too


def test_a_folder_without_a_manifest_loses_nothing(tmp_path, results):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.html").write_text("an older report, or the user's own file")
    build_report([results], out, formats=["md"])
    build_report([results], out, formats=["csv"])
    assert (out / "report.html").read_text().startswith("an older report")
    assert not (out / "report.md").exists() and (out / "tables" / "summary.csv").is_file()
