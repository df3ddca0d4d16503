"""Published numbers to put beside ours (PROTOCOLS.md, "Reference rows"), each with its source.

`values` maps a tap (conv1..res5), or a column the source reports (a training
set such as "VOC07+12"), to the number; the key BEST means "the best tap" (or
the whole fine-tuned network) where the source names no tap: such a value
appears in the summary table only. Protocol and metric names are the ones
ssl-bench records use (or will use, for protocols still to come: detection
AP50/AP/AP75, surface_normals median/within_11.25, linear top1,
semi_supervised top5). `dataset` is the dataset the row was measured on (the
ssl-bench dataset name, "imagenet" where ssl-bench has no reader): a row is
shown only beside results whose record says their data is that dataset
(benchmark.data.published: image counts and ids, no --limit, no generated
data); `shown_references` gives the rows or why they are left out.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from benchmark.record import WHOLE_NETWORK

BEST = "best"

GOYAL = ("Goyal, Mahajan, Gupta & Misra 2019, Scaling and Benchmarking Self-Supervised Visual Representation "
         "Learning, ICCV 2019, arXiv 1905.01235")
PIRL = ("Misra & van der Maaten 2020, Self-Supervised Learning of Pretext-Invariant Representations, CVPR 2020, "
        "arXiv 1912.01991, Table 1")
SIMCLR = ("Chen, Kornblith, Norouzi & Hinton 2020, A Simple Framework for Contrastive Learning of Visual "
          "Representations, ICML 2020, arXiv 2002.05709")
OPENSELFSUP = "OpenSelfSup / mmselfsup model zoo (github.com/open-mmlab/OpenSelfSup, docs/MODEL_ZOO.md)"
FAIR_README = "fair_self_supervision_benchmark README (github.com/facebookresearch/fair_self_supervision_benchmark)"
VISSL_ZOO = "VISSL model zoo (github.com/facebookresearch/vissl, MODEL_ZOO.md)"


@dataclasses.dataclass(frozen=True)
class ReferenceRow:
    """One published row: a checkpoint's numbers for one protocol and metric, with where they come from."""

    protocol: str
    metric: str
    checkpoint: str
    arch: str
    values: dict[str, float]
    source: str
    note: str = ""
    dataset: str = ""


def _goyal(protocol: str, metric: str, dataset: str, columns: tuple[str, ...],
           rows: dict[str, tuple[float, ...]], source: str, note: str) -> list[ReferenceRow]:
    return [ReferenceRow(protocol, metric, f"{name} (Goyal et al. 2019)", "resnet50", dict(zip(columns, values)),
                         source, note, dataset) for name, values in rows.items()]


RES_TAPS = ("conv1", "res2", "res3", "res4", "res5")
JIGSAW = ("Jigsaw ImageNet-1k", "Jigsaw ImageNet-22k", "Jigsaw YFCC-100M")

_VOC07 = _goyal("voc07_svm", "mAP", "voc2007", RES_TAPS, {
    "ImageNet supervised": (24.49, 47.75, 60.54, 80.36, 87.95),
    "Jigsaw ImageNet-1k": (27.09, 45.73, 56.61, 64.51, 57.17),
    "Jigsaw ImageNet-22k": (23.46, 46.72, 58.52, 71.76, 64.92),
    "Jigsaw YFCC-100M": (18.98, 46.71, 57.77, 71.21, 64.34),
}, GOYAL, "VOC07 linear SVM per layer (liblinear), test mAP")

_PLACES = _goyal("places205_linear", "top1", "places205", RES_TAPS, {
    "ImageNet supervised": (14.84, 32.59, 42.06, 50.83, 52.49),
    "Jigsaw ImageNet-1k": (15.08, 28.75, 36.83, 41.23, 34.36),
    "Jigsaw ImageNet-22k": (13.97, 29.46, 36.66, 41.72, 36.25),
    "Jigsaw YFCC-100M": (10.25, 29.67, 39.57, 44.87, 38.22),
}, GOYAL, "Places205 linear classifier per layer, val top-1")

_FAST_RCNN_ROWS = {
    "ImageNet supervised": (76.2, 70.5),
    "Places supervised": (74.5, 67.2),
    "Jigsaw ImageNet-1k": (68.3, 61.4),
    "Jigsaw ImageNet-22k": (75.4, 69.2),
    "Jigsaw YFCC-100M": (73.3, 66.6),
}
_FAST_RCNN = [row for i, (dataset, trained_on) in enumerate((("voc0712", "VOC07+12"), ("voc2007", "VOC07")))
              for row in _goyal("detection", "AP50", dataset, (WHOLE_NETWORK,),
                                {name: (values[i],) for name, values in _FAST_RCNN_ROWS.items()}, GOYAL,
                                f"Fast R-CNN R50 fine-tuned on {trained_on} trainval, VOC07 test mAP")]

_NORMALS_ROWS = {
    "ImageNet supervised": (17.1, 36.1),
    "Places supervised": (14.2, 41.8),
    "Jigsaw ImageNet-1k": (14.5, 41.2),
    "Jigsaw ImageNet-22k": (13.4, 43.7),
    "Jigsaw YFCC-100M": (13.1, 44.6),
}
_NORMALS = [row for i, metric in enumerate(("median", "within_11.25"))
            for row in _goyal("surface_normals", metric, "nyuv2", (BEST,),
                              {name: (values[i],) for name, values in _NORMALS_ROWS.items()}, GOYAL,
                              "NYUv2 surface normals, res5 and head fine-tuned"
                              + ("; median angular error in degrees (lower is better)" if i == 0 else
                                 "; % of pixels within 11.25 degrees"))]

_PIRL_ROWS = {"Supervised": (52.6, 81.1, 57.4), "Jigsaw": (48.9, 75.1, 52.9), "Rotation": (46.3, 72.5, 49.3),
              "NPID++": (52.3, 79.1, 56.9), "PIRL": (54.0, 80.7, 59.7), "MoCo": (55.2, 81.4, 61.2)}
_PIRL = [ReferenceRow("detection", metric, f"{name} (Misra & van der Maaten 2020)", "resnet50",
                      {WHOLE_NETWORK: values[i]}, PIRL, "Faster R-CNN R50-C4 trained on VOC07+12, VOC07 test",
                      "voc0712")
         for i, metric in enumerate(("AP", "AP50", "AP75")) for name, values in _PIRL_ROWS.items()]

_SIMCLR_LINEAR = [ReferenceRow("linear", "top1", f"{name} (Chen et al. 2020)", "resnet50", {BEST: value},
                               f"{SIMCLR}, Table 6", "ImageNet linear evaluation, top-1", "imagenet")
                  for name, value in {"Local Agg.": 60.2, "MoCo": 60.6, "PIRL": 63.6, "CPC v2": 63.8,
                                      "SimCLR": 69.3}.items()]
_SIMCLR_SEMI = [ReferenceRow("semi_supervised", "top5", f"{name} (Chen et al. 2020)", "resnet50",
                             {"1% labels": one, "10% labels": ten}, f"{SIMCLR}, Table 7",
                             "ImageNet fine-tuned on 1% / 10% of the labels, top-5", "imagenet")
                for name, (one, ten) in {"SimCLR": (75.5, 87.8), "PIRL": (57.2, 83.8),
                                         "InstDisc": (39.2, 77.4)}.items()]

_TV_SUPERVISED = "Supervised torchvision RN50 (OpenSelfSup zoo)"
_LOWSHOT_KS = (1, 2, 4, 8, 16, 32, 64, 96)
_LOWSHOT_VALUES = (52.99, 63.55, 73.70, 78.79, 81.76, 83.75, 85.18, 85.97)
_OPENSELFSUP = [
    ReferenceRow("voc07_svm", "mAP", _TV_SUPERVISED, "resnet50", {"res5": 87.17}, OPENSELFSUP,
                 "VOC07 SVM (liblinear), best tap res5", "voc2007"),
    ReferenceRow("voc07_svm", "mAP", "Random init RN50 (OpenSelfSup zoo)", "resnet50", {BEST: 30.54}, OPENSELFSUP,
                 "VOC07 SVM (liblinear), best tap (not named by the source)", "voc2007"),
    ReferenceRow("voc07_svm", "mAP", "MoCo v2 RN50 (OpenSelfSup zoo)", "resnet50", {BEST: 84.26}, OPENSELFSUP,
                 "VOC07 SVM (liblinear), best tap (not named by the source)", "voc2007"),
    ReferenceRow("places205_linear", "top1", _TV_SUPERVISED, "resnet50", dict(zip(RES_TAPS, (
        21.27, 36.10, 43.03, 51.38, 53.05))), OPENSELFSUP, "Places205 linear per layer, top-1", "places205"),
    *[ReferenceRow("lowshot", f"mAP_k{k}_mean", _TV_SUPERVISED, "resnet50", {"res5": value}, OPENSELFSUP,
                   f"VOC07 low-shot SVM (liblinear), k = {k}, best tap res5", "voc2007")
      for k, value in zip(_LOWSHOT_KS, _LOWSHOT_VALUES)],
]

_OTHERS = [
    ReferenceRow("surface_normals", "median", "Jigsaw RN50 (FAIR benchmark)", "resnet50", {BEST: 13.1},
                 FAIR_README, "NYUv2 surface normals, median angular error in degrees (lower is better)", "nyuv2"),
    ReferenceRow("linear", "top1", "Jigsaw IN-1k RN50, converted Goyal'19 (VISSL zoo)", "resnet50", {BEST: 46.58},
                 VISSL_ZOO, "ImageNet-1k linear evaluation, top-1", "imagenet"),
    ReferenceRow("linear", "top1", "Colorization IN-1k RN50, converted Goyal'19 (VISSL zoo)", "resnet50",
                 {BEST: 40.11}, VISSL_ZOO, "ImageNet-1k linear evaluation, top-1", "imagenet"),
]

REFERENCES: list[ReferenceRow] = [*_VOC07, *_PLACES, *_FAST_RCNN, *_NORMALS, *_PIRL, *_SIMCLR_LINEAR,
                                  *_SIMCLR_SEMI, *_OPENSELFSUP, *_OTHERS]


def references_for(protocol: str, metric: str | None = None, dataset: str | None = None) -> list[ReferenceRow]:
    """Published rows of a protocol (and metric; and the dataset they were measured on), in source order."""
    return [row for row in REFERENCES
            if row.protocol == protocol and (metric is None or row.metric == metric)
            and (dataset is None or row.dataset == dataset)]


def shown_references(settings: dict[str, Any], metric: str | None = None) -> tuple[list[ReferenceRow], str]:
    """(rows to show beside one variant's results, why its rows are left out or ''), from the variant's settings
    (protocol, dataset, and `published`: the record's verdict on whether its data is the published dataset)."""
    rows = references_for(settings["protocol"], metric, settings["dataset"])
    published = settings.get("published") or {}
    if not rows or published.get("as") == settings["dataset"]:
        return rows, ""
    why = published.get("why") or "recorded before ssl-bench compared data with the published datasets; rerun"
    return [], f"Published {settings['dataset']} rows left out: {why}."
