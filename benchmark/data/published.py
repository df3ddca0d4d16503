"""Is this data the dataset published numbers were measured on? Image counts and ids of the real splits.

Reports put a published reference row (reports.references) only beside
results whose record says its data is that dataset: the real VOC2007 test set
(4952 images, ids of 6 digits), VOC07+12 trainval (16551), NYUv2's 795/654
split with Ladicky et al.'s ground-truth normals, Places205 val (20500).
Generated data (`ssl-bench make-data`), `--limit`ed runs and other splits are
not; the record keeps why, and the report prints it where rows are left out.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmark.errors import SslBenchError

VOC07_ID = r"\d{6}"


@dataclasses.dataclass(frozen=True)
class PublishedSplit:
    """A split as the literature used it: its image count and the pattern every id matches."""

    count: int
    ids: str


PUBLISHED: dict[str, dict[str, PublishedSplit]] = {
    "voc2007": {"trainval": PublishedSplit(5011, VOC07_ID), "test": PublishedSplit(4952, VOC07_ID)},
    "voc0712": {"trainval": PublishedSplit(16551, rf"VOC2007/{VOC07_ID}|VOC2012/20(08|09|10|11)_\d{{6}}"),
                "test": PublishedSplit(4952, f"VOC2007/{VOC07_ID}")},  # ids carry their year folder
    "nyuv2": {"train": PublishedSplit(795, r"\d{4}"), "test": PublishedSplit(654, r"\d{4}")},
    "places205": {"val": PublishedSplit(20500, r".+")},
}

NORMALS_SOURCE = "normals_source.txt"  # in an NYUv2 root: where its normals come from (make-data nyuv2-from-mat)
GROUND_TRUTH = "ground truth"


def _nyuv2_normals(dataset: Any) -> str | None:
    """Published NYUv2 normal numbers are errors against ground-truth normals, not normals computed from depth."""
    path = Path(dataset.base) / NORMALS_SOURCE
    source = path.read_text().strip() if path.is_file() else ""
    if source.startswith(GROUND_TRUTH):
        return None
    return (f"nyuv2 normals are {source}, not ground truth" if source else
            f"nothing says the nyuv2 normals are ground truth ({path} is missing; make-data nyuv2-from-mat "
            "--normals writes it)")


# Further conditions of a dataset, beyond its splits: None when met, else why not.
EXTRA_CHECKS: dict[str, Callable[[Any], str | None]] = {"nyuv2": _nyuv2_normals}


def published_as(dataset: Any, name: str) -> dict[str, Any]:
    """{"as": name when `dataset` is the published `name` else None, "why": the evidence either way}."""
    expected = PUBLISHED.get(name)
    if expected is None:
        return {"as": None, "why": f"no published numbers are known for '{name}' data"}
    if dataset.limit is not None:
        return {"as": None, "why": f"--limit {dataset.limit} keeps a subset of {name}"}
    for split, published in expected.items():
        try:
            ids = dataset.ids(split)
        except SslBenchError:
            return {"as": None, "why": f"{name} has no {split} split here (published: {published.count} images)"}
        if len(ids) != published.count:
            return {"as": None, "why": f"{name} {split} has {len(ids)} images, the published one {published.count}"}
        odd = next((i for i in ids if not re.fullmatch(published.ids, i)), None)
        if odd is not None:
            return {"as": None, "why": f"{name} {split} has image id '{odd}', not one of the published set's"}
    problem = EXTRA_CHECKS[name](dataset) if name in EXTRA_CHECKS else None
    if problem:
        return {"as": None, "why": problem}
    counts = ", ".join(f"{split} {published.count}" for split, published in expected.items())
    return {"as": name, "why": f"image counts and ids of the published {name} ({counts})"}
