"""NYUv2 surface normals: root/images/ID.png (RGB), root/normals/ID.png (n = v / 127.5 - 1),
root/masks/ID.png (nonzero = valid), root/splits/{train,test}.txt listing the IDs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image

from benchmark.data.base import ImageDataset
from benchmark.data.images import Digest, ImageFiles, check_split, first, require_dir, require_file, require_root
from benchmark.errors import SslBenchError
from benchmark.registry import DATASETS

FOLDERS = ("images", "normals", "masks")

_HINT = ("pass --data-root pointing at a folder holding images/, normals/, masks/ and splits/{train,test}.txt "
         "(or write a small one with `ssl-bench make-data nyuv2 --out DIR`)")


def _read_array(path: Path, mode: str) -> np.ndarray:
    require_file(path, "NYUv2 file", _HINT)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except (OSError, SyntaxError, ValueError) as error:
        raise SslBenchError(f"cannot read {path} ({error}); replace or re-extract this file") from error


UNIT_TOLERANCE = 0.05  # |length - 1| of a decoded normal on a valid pixel; 8-bit quantisation stays under 0.007


def decode_normals(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """float32 (H, W, 3) unit normals from an RGB PNG, n = v / 127.5 - 1 renormalised, and the decoded lengths."""
    normals = _read_array(path, "RGB").astype(np.float32) / 127.5 - 1
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    return normals / np.maximum(length, 1e-6), length[..., 0]


def read_normals(path: Path) -> np.ndarray:
    """float32 (H, W, 3) unit normals from an RGB PNG, n = v / 127.5 - 1 renormalised."""
    return decode_normals(path)[0]


def image_size(path: Path, what: str) -> tuple[int, int]:
    """(width, height) from a file's header, without decoding it."""
    require_file(path, what, _HINT)
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as error:
        raise SslBenchError(f"cannot read {path} ({error}); replace or re-extract this file") from error


@DATASETS.register("nyuv2")
class NyuV2(ImageDataset):
    """NYUv2 labelled set for surface normals: train (795) and test (654)."""

    name = "nyuv2"
    task = "dense"
    provides = frozenset({"normals"})
    splits = ("train", "test")
    train_split = "train"
    test_split = "test"

    def __init__(self, root: Path | None, limit: int | None = None) -> None:
        super().__init__(root, limit)
        self.base = require_root(self.name, root, _HINT)
        for folder in (*FOLDERS, "splits"):
            require_dir(self.base / folder, f"NYUv2 {folder}", _HINT)
        self._ids: dict[str, list[str]] = {}
        self._digest: str | None = None

    @property
    def classes(self) -> list[str]:
        return []

    def ids(self, split: str) -> list[str]:
        check_split(self.name, split, self.splits)
        if split not in self._ids:
            path = require_file(self.base / "splits" / f"{split}.txt", "NYUv2 split list", _HINT)
            ids = sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
            self._ids[split] = first(ids, self.limit)
        return self._ids[split]

    def labels(self, split: str) -> np.ndarray:
        """No image-level labels: an int8 (N, 0) array, aligned with ids(split); see targets()."""
        return np.zeros((len(self.ids(split)), 0), dtype=np.int8)

    def paths(self, split: str, folder: str) -> list[Path]:
        return [self.base / folder / f"{i}.png" for i in self.ids(split)]

    def open_split(self, split: str, transform: Any) -> torch.utils.data.Dataset:
        return ImageFiles(self.paths(split, "images"), transform)

    def targets(self, split: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Ground truth of image i: unit normals float32 (H, W, 3) and valid-pixel mask bool (H, W)."""
        image_id = self.ids(split)[i]
        normals_path = self.base / "normals" / f"{image_id}.png"
        normals, length = decode_normals(normals_path)
        mask_path = self.base / "masks" / f"{image_id}.png"
        mask = _read_array(mask_path, "L") > 0
        if mask.shape != normals.shape[:2]:
            raise SslBenchError(f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but its normals are "
                                f"{normals.shape[1]}x{normals.shape[0]}; they must match")
        if not mask.any():
            raise SslBenchError(f"mask {mask_path} marks no valid pixel; fix or drop image '{image_id}' "
                                f"from splits/{split}.txt")
        off = np.abs(length[mask] - 1) > UNIT_TOLERANCE
        if off.any():
            raise SslBenchError(f"{normals_path}: {int(off.sum())} valid pixels do not decode to unit vectors "
                                f"(n = v / 127.5 - 1 has length {float(length[mask][off][0]):.3f}); "
                                "is this a normals file?")
        return normals, mask

    def check_split_files(self, split: str) -> list[tuple[int, int]]:
        """(width, height) of each image of a split, after checking that every listed id has an image,
        normals and mask of one size (headers only); SslBenchError naming the first offender."""
        sizes = []
        for image_id in self.ids(split):
            paths = [self.base / folder / f"{image_id}.png" for folder in FOLDERS]
            missing = [path for path in paths if not path.is_file()]
            if missing:
                raise SslBenchError(f"splits/{split}.txt lists id '{image_id}' but {missing[0]} does not exist; "
                                    f"remove the id or add its files under {self.base}")
            found = [image_size(path, f"NYUv2 {folder}") for path, folder in zip(paths, FOLDERS)]
            if len(set(found)) > 1:
                shapes = ", ".join(f"{folder} {w}x{h}" for folder, (w, h) in zip(FOLDERS, found))
                raise SslBenchError(f"image '{image_id}' of split '{split}' has files of different sizes "
                                    f"({shapes}); image, normals and mask must match")
            sizes.append(found[0])
        return sizes

    def digest(self) -> str:
        if self._digest is None:
            digest = Digest()
            for split in self.splits:
                digest.add(split, *self.ids(split))
                for folder in FOLDERS:
                    digest.add_files(self.base, self.paths(split, folder))
            self._digest = digest.hexdigest()
        return self._digest
