"""build_report end to end on real records (knn, voc07_svm) plus generated low-shot records."""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from benchmark.errors import SslBenchError
from benchmark.runner import RunOptions, run
from reports.plots import lowshot_curves, merge_orders, tap_profiles
from reports.records import load_records
from reports.report import FORMATS, build_report
from tests.test_published import claim_published

XSS = "<img src=x onerror=alert(1)>"
MATH = "_$x^2$ net"  # mathtext and a legend-hiding leading underscore
PNG = b"\x89PNG\r\n\x1a\n"
LOWSHOT = {"ckA": (20.0, 1.5), XSS: (24.0, 0.5), MATH: (30.0, 2.0)}  # mAP at k=1 of res5avg, std


def lowshot_record(template: dict, name: str, base: float, std: float) -> dict:
    """A schema-complete lowshot record (ks 1, 2, 4) derived from a real voc07_svm record."""
    record = copy.deepcopy(template)
    record["checkpoint"]["name"] = name
    record["protocol"] = {"name": "lowshot", "version": "1", "primary_metric": "mAP_k4_mean",
                          "metrics": [{"name": f"mAP_k{k}_{stat}", "higher_is_better": stat == "mean" or None,
                                       "primary": (k, stat) == (4, "mean")}
                                      for k in (1, 2, 4) for stat in ("mean", "std")]}
    record["config"] = {"ks": [1, 2, 4], "samples": 5, "sample_seed": 0}
    record["config_digest"] = "feedbeef0001"
    record["metrics"] = {tap: {f"mAP_k{k}_{stat}": value for k in (1, 2, 4)
                               for stat, value in (("mean", base + offset + 4 * k), ("std", std))}
                         for tap, offset in (("res3", -5.0), ("res5avg", 0.0))}
    record["details"] = {}
    for key in ("bootstrap", "arrays"):  # the template's per-image statistics and side file are not lowshot's
        record.pop(key, None)
    return record


@pytest.fixture(scope="module")
def results(tmp_path_factory, folder_root, voc_root, resnet18_cifar_file) -> Path:
    root = tmp_path_factory.mktemp("results")
    cache = tmp_path_factory.mktemp("report-cache")
    for name, checkpoint in (("ckA", "random:resnet18_cifar"), (XSS, str(resnet18_cifar_file))):
        for protocol, dataset, data_root, overrides in (
                ("knn", "folder", folder_root, {"ks": "1,3"}),
                ("voc07_svm", "voc2007", voc_root, {"custom_costs": "0.1,1"})):
            run(RunOptions(checkpoint=checkpoint, protocol=protocol, dataset=dataset, data_root=data_root,
                           taps=("res3", "res5avg"), results_dir=root, overrides=overrides, name=name,
                           arch="resnet18_cifar", cache_dir=cache))
    template = json.loads((root / "ckA" / "voc07_svm.json").read_text())
    for i, (name, (base, std)) in enumerate(LOWSHOT.items()):
        path = root / f"lowshot{i}" / "lowshot.json"
        path.parent.mkdir()
        path.write_text(json.dumps(lowshot_record(template, name, base, std)))
    return root


@pytest.fixture(scope="module")
def report(results, tmp_path_factory) -> tuple[Path, list[Path], list[str]]:
    out = tmp_path_factory.mktemp("report")
    warnings: list[str] = []
    return out, build_report([results], out, warn=warnings.append), warnings


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text outside tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Elements:
    parser = Elements()
    parser.feed(html)
    return parser


def test_every_format_is_written_and_listed(report):
    out, written, warnings = report
    assert warnings == []
    on_disk = {p for p in out.rglob("*") if p.is_file()}
    assert set(written) == on_disk
    names = {str(p.relative_to(out)) for p in written}
    assert {"report.md", "report.html", "report.tex", "tables/summary.csv"} <= names
    pngs = [p for p in written if p.suffix == ".png"]
    # a tap profile per variant (knn, voc07_svm, lowshot) and one low-shot curve
    assert sorted(p.name for p in pngs) == ["lowshot-lowshot.png", "taps-knn.png", "taps-lowshot.png",
                                            "taps-voc07_svm.png"]
    assert all(p.read_bytes().startswith(PNG) for p in pngs)
    tex = (out / "report.tex").read_text()
    assert tex.startswith(r"\documentclass") and tex.count(r"\begin{table}") == len(list(out.glob("tables/*.csv")))
    assert r"\textless{}img src=x onerror=alert(1)\textgreater{}" in tex


def test_markdown_holds_both_checkpoints_marks_and_plot_links(report):
    out, _, _ = report
    md = (out / "report.md").read_text()
    assert "| ckA |" in md and r"\<img src=x onerror=alert(1)\>" in md and XSS not in md
    assert "**" in md and "†" in md and "±" in md
    for title in ("knn: top1\\_k1", "voc07\\_svm: mAP", "lowshot: mAP\\_k4\\_mean", "Summary"):
        assert title in md
    links = re.findall(r"\]\((plots/[^)]+\.png)\)", md)
    assert sorted(links) == sorted(str(p.relative_to(out)) for p in out.glob("plots/*.png"))


def test_summary_csv_numbers_are_the_best_tap_of_each_record(report, results):
    out, _, _ = report
    summary = pd.read_csv(out / "tables" / "summary.csv", index_col="checkpoint")
    for name in ("ckA", XSS):
        for protocol, metric in (("voc07_svm", "mAP"), ("knn", "top1_k1")):
            record = next(json.loads(p.read_text()) for p in results.rglob(f"{protocol}.json")
                          if json.loads(p.read_text())["checkpoint"]["name"] == name)
            assert record["protocol"]["primary_metric"] == metric
            best = max(record["metrics"].values(), key=lambda m: m[metric])[metric]
            assert summary.loc[name, protocol] == pytest.approx(best, abs=0.01)
    base, std = LOWSHOT[MATH]
    assert summary.loc[MATH, "lowshot"] == pytest.approx(base + 16)  # k=4 at res5avg
    assert summary.loc[MATH, "lowshot std"] == pytest.approx(std)


def test_html_is_self_contained_and_images_are_data_uris(report):
    out, written, _ = report
    html = (out / "report.html").read_text()
    page = parse(html)
    for tag, attrs in page.tags:
        assert tag not in ("link", "script", "iframe", "object", "embed"), tag
        for key in ("src", "href", "srcset", "action"):
            assert not re.match(r"\s*(https?:)?//", attrs.get(key) or ""), (tag, attrs)
    assert "@import" not in html and "url(" not in html
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) == sum(p.suffix == ".png" for p in written)
    on_disk = {p.read_bytes() for p in written if p.suffix == ".png"}
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,") and attrs["alt"]
        assert base64.b64decode(attrs["src"].split(",", 1)[1]) in on_disk


def test_names_are_escaped_everywhere_in_html(report):
    out, _, _ = report
    html = (out / "report.html").read_text()
    assert XSS not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    page = parse(html)
    assert all("onerror" not in attrs for _, attrs in page.tags)
    assert XSS in "".join(page.text)  # shown to the reader as text


def test_references_rows_carry_their_source_only_when_asked(results, report, tmp_path):
    out, _, _ = report
    assert "published" not in (out / "report.md").read_text()
    build_report([results], tmp_path / "generated", formats=["md"], references=True)
    assert "(published)" not in (tmp_path / "generated" / "report.md").read_text()
    assert "Published voc2007 rows left out" in (tmp_path / "generated" / "report.md").read_text()
    shutil.copytree(results, tmp_path / "real")
    claim_published(tmp_path / "real")
    written = build_report([tmp_path / "real"], tmp_path, formats=["md", "csv", "html"], references=True)
    md = (tmp_path / "report.md").read_text()
    assert "*ImageNet supervised (Goyal et al. 2019)* (published)" in md
    assert "arXiv 1905.01235" in md and "OpenSelfSup" in md
    voc = pd.read_csv(tmp_path / "tables" / "voc07_svm_mAP.csv", index_col="checkpoint")
    row = voc.loc["ImageNet supervised (Goyal et al. 2019)"]
    assert bool(row["published"]) and "arXiv 1905.01235" in row["source"] and row["res5"] == pytest.approx(87.95)
    assert not voc.loc["ckA", "published"]
    html = (tmp_path / "report.html").read_text()
    assert "Goyal, Mahajan, Gupta &amp; Misra 2019" in html and 'class="published"' in html
    assert not any(p.suffix == ".tex" for p in written)


def test_malformed_record_is_skipped_with_a_warning_and_fatal_when_strict(results, tmp_path):
    copied = tmp_path / "results"
    shutil.copytree(results, copied)
    bad = copied / "ckA" / "broken<b>.json"
    bad.write_text('{"schema_version": 1, "metrics": ')
    warnings: list[str] = []
    written = build_report([copied], tmp_path / "out", formats=["html", "md"], warn=warnings.append)
    assert len(warnings) == 1 and str(bad) in warnings[0]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "broken&lt;b&gt;.json" in html and "broken<b>" not in html
    assert "broken\\<b\\>.json" in (tmp_path / "out" / "report.md").read_text()
    assert written
    with pytest.raises(SslBenchError, match=re.escape(str(bad))):
        build_report([copied], tmp_path / "strict", strict=True)


def test_bad_input_raises_one_line_user_errors(results, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SslBenchError, match="no result records under"):
        build_report([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(SslBenchError, match="md,html,csv,tex") as error:
        build_report([results], tmp_path / "out", formats=["md", "pdf"])
    assert "'pdf'" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out" / "report.md").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(SslBenchError, match="--out"):
        build_report([results], tmp_path / "file" / "out")
    assert FORMATS == ("md", "html", "csv", "tex")


def test_plots_render_odd_names_and_leave_no_pyplot_figures(results, tmp_path):
    import matplotlib.pyplot as plt

    shutil.copytree(results, tmp_path / "real")
    claim_published(tmp_path / "real")
    before = plt.get_fignums()
    records = load_records([tmp_path / "real"])
    plots = tap_profiles(records, references=True, formats=("png", "svg")) + lowshot_curves(records, True)
    assert plt.get_fignums() == before
    assert [p.name for p in plots] == ["taps-knn", "taps-lowshot", "taps-voc07_svm", "lowshot-lowshot"]
    for plot in plots:
        assert plot.png.startswith(PNG)
    svg = plots[0].images["svg"].decode()
    assert svg.startswith("<?xml") and "<script" not in svg
    assert "OpenSelfSup" in " ".join(plots[-1].sources)  # the published low-shot curve is drawn
    assert any("Goyal" in s for s in plots[2].sources)


def test_merge_orders_keeps_network_order():
    assert merge_orders([["res3", "res5avg"], ["conv1", "res2", "res3", "res4", "res5"]]) == [
        "conv1", "res2", "res3", "res4", "res5", "res5avg"]
    assert merge_orders([["conv1", "conv5"], ["conv1", "conv2", "conv5"]]) == ["conv1", "conv2", "conv5"]
