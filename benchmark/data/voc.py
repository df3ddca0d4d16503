"""PASCAL VOC laid out as torchvision's VOCDetection expects it.

root/VOCdevkit/VOC<year>/{Annotations,ImageSets/Main,JPEGImages}; root may also be VOCdevkit/ itself.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch.utils.data

from benchmark.data.base import ImageDataset
from benchmark.data.images import (Digest, ImageFiles, check_split, require_dir, require_file,
                                   require_root)
from benchmark.errors import SslBenchError
from benchmark.registry import DATASETS

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")

# value in <class>_<split>.txt -> image label: present, absent, only difficult instances
_LABEL_MAP = {1: 1, -1: 0, 0: -1}

_HINT = ("pass --data-root pointing at the folder that holds VOCdevkit/ "
         "(or write a small one with `ssl-bench make-data voc --out DIR`)")


def read_list(path: Path) -> list[str]:
    """Image ids of an ImageSets/Main split file, sorted."""
    return sorted({line.split()[0] for line in path.read_text().splitlines() if line.strip()})


def read_image_labels(main: Path, split: str, ids: list[str]) -> np.ndarray:
    """int8 (N, 20) labels from ImageSets/Main/<class>_<split>.txt: 1 present, 0 absent, -1 difficult only."""
    labels = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.int8)
    for c, name in enumerate(VOC_CLASSES):
        path = require_file(main / f"{name}_{split}.txt", "VOC class list", _HINT)
        values: dict[str, int] = {}
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("1", "0", "-1"):
                raise SslBenchError(f"{path}:{number}: expected '<image id> 1|0|-1', got {line.strip()!r}")
            values[fields[0]] = _LABEL_MAP[int(fields[1])]
        missing = [i for i in ids if i not in values]
        if missing:
            raise SslBenchError(f"{path} has no label for image {missing[0]} ({len(missing)} missing) "
                                f"listed in {main / (split + '.txt')}; re-extract the VOC annotations")
        labels[:, c] = [values[i] for i in ids]
    return labels


def read_objects(path: Path) -> dict[str, np.ndarray]:
    """Boxes (xmin, ymin, xmax, ymax as in the XML), class indices and difficult flags of one annotation file."""
    require_file(path, "VOC annotation", _HINT)
    try:
        root = ET.parse(path).getroot()
        boxes, labels, difficult = [], [], []
        for obj in root.iter("object"):
            name = obj.findtext("name", "").strip()
            if name not in VOC_CLASSES:
                raise SslBenchError(f"{path}: unknown VOC class '{name}'; expected one of the 20 VOC classes")
            box = obj.find("bndbox")
            if box is None:
                raise SslBenchError(f"{path}: object '{name}' has no bndbox")
            boxes.append([float(box.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")])
            labels.append(VOC_CLASSES.index(name))
            difficult.append(obj.findtext("difficult", "0").strip() == "1")
    except (ET.ParseError, ValueError) as error:
        raise SslBenchError(f"cannot parse VOC annotation {path} ({error}); re-extract it") from error
    return {"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=np.int64),
            "difficult": np.asarray(difficult, dtype=bool)}


class _Voc(ImageDataset):
    """Image-level VOC labels for the SVM protocols, objects for detection."""

    task = "multilabel"
    provides = frozenset({"labels", "multilabel", "boxes"})
    train_split = "trainval"
    test_split = "test"
    # split -> the (year, split) lists it joins
    parts: ClassVar[dict[str, tuple[tuple[str, str], ...]]]
    prefix_ids: ClassVar[bool] = False

    def __init__(self, root: Path | None, limit: int | None = None, seed: int = 0) -> None:
        super().__init__(root, limit, seed)
        root = require_root(self.name, root, _HINT)
        # accept the folder holding VOCdevkit/ (torchvision's convention) or VOCdevkit/ itself
        self.devkit = root if root.name == "VOCdevkit" and not (root / "VOCdevkit").is_dir() else root / "VOCdevkit"
        self._indexed: dict[str, tuple[list[tuple[Path, str, str]], np.ndarray]] = {}
        self._digest: str | None = None
        for year in sorted({year for joined in self.parts.values() for year, _ in joined}):
            require_dir(self.devkit / f"VOC{year}" / "ImageSets" / "Main", f"VOC{year}", _HINT)

    def _list_paths(self, split: str) -> list[Path]:
        return [self.devkit / f"VOC{year}" / "ImageSets" / "Main" / f"{year_split}.txt"
                for year, year_split in self.parts[split]]

    def present_splits(self) -> tuple[str, ...]:
        """The splits whose ImageSets/Main lists exist: a run needs only those it reads."""
        return tuple(split for split in self.splits if all(path.is_file() for path in self._list_paths(split)))

    @property
    def classes(self) -> list[str]:
        return list(VOC_CLASSES)

    def _index(self, split: str) -> tuple[list[tuple[Path, str, str]], np.ndarray]:
        """(year folder, raw id, id) per image and the labels, sorted by id, limited."""
        if split not in self._indexed:
            self._indexed[split] = self._read_index(split)
        return self._indexed[split]

    def _read_index(self, split: str) -> tuple[list[tuple[Path, str, str]], np.ndarray]:
        check_split(self.name, split, self.splits)
        missing = [path for path in self._list_paths(split) if not path.is_file()]
        if missing:
            present = ", ".join(self.present_splits()) or "none"
            raise SslBenchError(f"split '{split}' of dataset '{self.name}' needs the list {missing[0]}, which is "
                                f"missing (splits found: {present}); add the file or pick a split that exists "
                                "with --set train_split=NAME / --set test_split=NAME")
        entries, blocks = [], []
        for year, year_split in self.parts[split]:
            folder = self.devkit / f"VOC{year}"
            raw = read_list(folder / "ImageSets" / "Main" / f"{year_split}.txt")
            blocks.append(read_image_labels(folder / "ImageSets" / "Main", year_split, raw))
            entries += [(folder, i, f"VOC{year}/{i}" if self.prefix_ids else i) for i in raw]
        labels = np.concatenate(blocks)
        order = sorted(range(len(entries)), key=lambda k: entries[k][2])
        order = [order[k] for k in self.subset(labels[order])]
        return [entries[k] for k in order], labels[order]

    def ids(self, split: str) -> list[str]:
        return [entry[2] for entry in self._index(split)[0]]

    def labels(self, split: str) -> np.ndarray:
        return self._index(split)[1]

    def image_paths(self, split: str) -> list[Path]:
        return [folder / "JPEGImages" / f"{raw}.jpg" for folder, raw, _ in self._index(split)[0]]

    def open_split(self, split: str, transform: Any) -> torch.utils.data.Dataset:
        return ImageFiles(self.image_paths(split), transform)

    def objects(self, split: str, i: int) -> dict[str, np.ndarray]:
        """Objects of image i: boxes float32 (M, 4) xmin, ymin, xmax, ymax (1-based), labels int64, difficult bool."""
        folder, raw, _ = self._index(split)[0][i]
        return read_objects(folder / "Annotations" / f"{raw}.xml")

    def digest(self) -> str:
        if self._digest is None:
            digest = Digest()
            for split in self.present_splits():
                digest.add(split, *self.ids(split), self.labels(split).tobytes())
                digest.add_files(self.devkit, self.image_paths(split))
            self._digest = digest.hexdigest()
        return self._digest


@DATASETS.register("voc2007")
class Voc2007(_Voc):
    """VOC2007: trainval (5011 images) and test (4952); train and val too."""

    name = "voc2007"
    splits = ("trainval", "test", "train", "val")
    parts = {split: (("2007", split),) for split in splits}


@DATASETS.register("voc0712")
class Voc0712(_Voc):
    """VOC07+12: trainval = VOC2007 trainval + VOC2012 trainval (16551 images), test = VOC2007 test."""

    name = "voc0712"
    splits = ("trainval", "test")
    parts = {"trainval": (("2007", "trainval"), ("2012", "trainval")), "test": (("2007", "test"),)}
    prefix_ids = True
