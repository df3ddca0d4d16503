"""Published reference rows appear only beside results on the dataset they were measured on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmark.data.published import NORMALS_SOURCE, published_as
from benchmark.data.voc import VOC_CLASSES
from benchmark.registry import DATASETS
from reports.records import load_records
from reports.references import references_for
from reports.tables import protocol_tables, summary_table
from tests.test_records import write_record


def claim_published(results: Path) -> None:
    """Mark every record under `results` as measured on the published dataset it names (report tests)."""
    for path in results.rglob("*.json"):
        if ".artifacts" in str(path) or ".partial" in path.parts:
            continue
        record = json.loads(path.read_text())
        record["dataset"]["published"] = {"as": record["dataset"]["name"], "why": "test data standing in for it"}
        path.write_text(json.dumps(record))


def write_voc_lists(root: Path, year: str, splits: dict[str, list[str]]) -> None:
    """ImageSets/Main lists of a VOC year (no images: recognising the dataset reads ids only)."""
    main = root / "VOCdevkit" / f"VOC{year}" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for split, ids in splits.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for name in VOC_CLASSES:
            (main / f"{name}_{split}.txt").write_text("".join(f"{i} -1\n" for i in ids))


def voc07_ids(n: int, start: int = 1) -> list[str]:
    return [f"{k:06d}" for k in range(start, start + n)]


@pytest.fixture(scope="module")
def real_voc(tmp_path_factory) -> Path:
    """VOC2007 and VOC2012 lists with the published image counts and id forms."""
    root = tmp_path_factory.mktemp("voc")
    write_voc_lists(root, "2007", {"trainval": voc07_ids(5011), "test": voc07_ids(4952, 6000)})
    write_voc_lists(root, "2012", {"trainval": [f"2008_{k:06d}" for k in range(11540)]})
    return root


@pytest.mark.parametrize("name", ["voc2007", "voc0712"])
def test_the_real_voc_is_recognised_by_its_counts_and_ids(real_voc, name):
    verdict = published_as(DATASETS.get(name)(root=real_voc), name)
    assert verdict["as"] == name and "test 4952" in verdict["why"]
    limited = published_as(DATASETS.get(name)(root=real_voc, limit=4000), name)
    assert limited == {"as": None, "why": f"--limit 4000 keeps a subset of {name}"}


def test_generated_voc_and_odd_ids_are_not_the_published_set(voc_root, tmp_path):
    verdict = published_as(DATASETS.get("voc2007")(root=voc_root), "voc2007")
    assert verdict["as"] is None and "the published one 5011" in verdict["why"]
    write_voc_lists(tmp_path, "2007", {"trainval": voc07_ids(5011),
                                       "test": [*voc07_ids(4951, 6000), "2008_000001"]})
    verdict = published_as(DATASETS.get("voc2007")(root=tmp_path), "voc2007")
    assert verdict == {"as": None, "why": "voc2007 test has image id '2008_000001', not one of the published set's"}


class Stub:
    """The parts of a dataset published_as reads."""

    def __init__(self, root: Path, counts: dict[str, int], limit: int | None = None) -> None:
        self.base = root
        self.limit = limit
        self.counts = counts

    def ids(self, split: str) -> list[str]:
        return [f"{k:04d}" for k in range(1, self.counts[split] + 1)]


def test_nyuv2_needs_the_published_split_and_ground_truth_normals(tmp_path):
    real = Stub(tmp_path, {"train": 795, "test": 654})
    assert "normals_source.txt is missing" in published_as(real, "nyuv2")["why"]
    (tmp_path / NORMALS_SOURCE).write_text("computed from depth (not Ladicky et al.'s ground truth)\n")
    assert published_as(real, "nyuv2") == {"as": None, "why": "nyuv2 normals are computed from depth "
                                                            "(not Ladicky et al.'s ground truth), not ground truth"}
    (tmp_path / NORMALS_SOURCE).write_text("ground truth: normals.mat\n")
    assert published_as(real, "nyuv2")["as"] == "nyuv2"
    assert published_as(Stub(tmp_path, {"train": 16, "test": 8}), "nyuv2")["why"] == (
        "nyuv2 train has 16 images, the published one 795")
    assert published_as(real, "folder") == {"as": None, "why": "no published numbers are known for 'folder' data"}


def test_detection_rows_carry_the_training_set_they_were_measured_on():
    voc07 = references_for("detection", "AP50", "voc2007")
    voc0712 = references_for("detection", "AP50", "voc0712")
    assert len(voc07) == 5 and len(voc0712) == 5 + 6
    imagenet = "ImageNet supervised (Goyal et al. 2019)"
    assert {r.checkpoint: r.values for r in voc07}[imagenet] == {"network": 70.5}
    assert {r.checkpoint: r.values for r in voc0712}[imagenet] == {"network": 76.2}
    assert all(r.dataset for r in references_for("linear") + references_for("semi_supervised"))


def test_reports_show_published_rows_only_beside_the_published_data(tmp_path):
    for name, value in (("a", 50.0), ("b", 55.0)):
        write_record(tmp_path / "real", name, "voc07_svm", {"res5": {"mAP": value}}, "mAP")
        write_record(tmp_path / "real", name, "detection", {"network": {"AP50": value}}, "AP50", dataset="voc0712")
    shutil.copytree(tmp_path / "real", tmp_path / "generated")
    claim_published(tmp_path / "real")
    imagenet = "ImageNet supervised (Goyal et al. 2019)"

    real = {t.variant: t for t in protocol_tables(load_records(tmp_path / "real"), references=True)}
    assert real["voc07_svm"].values.loc[imagenet, "res5"] == 87.95
    assert real["detection"].values.loc[imagenet, "network"] == 76.2  # trained on VOC07+12, as the records
    assert "left out" not in real["voc07_svm"].caption

    records = load_records(tmp_path / "generated")
    generated = {t.variant: t for t in protocol_tables(records, references=True)}
    for variant in ("voc07_svm", "detection"):
        assert not generated[variant].reference_rows and imagenet not in generated[variant].values.index
    assert "Published voc2007 rows left out: recorded before ssl-bench compared data" in generated["voc07_svm"].caption
    summary = summary_table(records, references=True)
    assert not summary.reference_rows and "detection: Published voc0712 rows left out" in summary.caption


def test_a_run_on_generated_data_records_why_it_is_not_the_published_set(tmp_path, voc_root):
    from benchmark.runner import RunOptions, run

    record, _ = run(RunOptions(checkpoint="random:resnet18_cifar", protocol="voc07_svm", data_root=voc_root,
                               results_dir=tmp_path / "r", cache_dir=None, taps=("res5avg",),
                               overrides={"folds": "2", "custom_costs": "1"}))
    assert record["dataset"]["published"] == {"as": None, "why": "voc2007 trainval has 60 images, "
                                                                 "the published one 5011"}
    table = protocol_tables(load_records(tmp_path / "r"), references=True)[0]
    assert not table.reference_rows
    assert "Published voc2007 rows left out: voc2007 trainval has 60 images, the published one 5011." in table.caption
