"""NYUv2 surface normals: root/images/ID.png (RGB), root/normals/ID.png (n = v / 127.5 - 1),
root/masks/ID.png (nonzero = valid), root/splits/{train,test}.txt listing the IDs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image

from benchmark.data.base import ImageDataset
from benchmark.data.images import Digest, ImageFiles, check_split, require_dir, require_file, require_root
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

    def __init__(self, root: Path | None, limit: int | None = None, seed: int = 0) -> None:
        super().__init__(root, limit, seed)
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
            self._ids[split] = [ids[i] for i in self.subset(np.zeros((len(ids), 0)))]
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


# ---------------------------------------------------------------- the official .mat files -> this layout

# Kinect RGB intrinsics of the NYU Depth v2 toolbox (camera_params.m): fx, fy, cx, cy in pixels of 640x480
NYU_INTRINSICS = (5.1885790117450188e+02, 5.1946961112127485e+02, 3.2558244941119034e+02, 2.5373616633400465e+02)
_MAT_HINT = ("pass the official nyu_depth_v2_labeled.mat (MATLAB v7.3, an HDF5 file with 'images' and 'depths') "
             "and splits.mat (trainNdxs, testNdxs)")


def normals_from_depth(depth: np.ndarray, intrinsics: tuple[float, float, float, float] = NYU_INTRINSICS,
                       smooth: int = 5, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (H, W, 3) in camera coordinates (x right, y down, z forward, facing the camera) and a
    mask, from a depth map in metres: back-project, box-filter the points over smooth x smooth pixels,
    cross the central differences along x and y. Valid: finite positive depth at the pixel and its
    4-neighbours (and `valid` when given, e.g. measured raw depth), not at the image border.

    Not Ladicky et al.'s ground truth (normals fitted to local planes on their own depth processing): errors
    against these normals are not comparable to published NYUv2 numbers.
    """
    from scipy import ndimage
    height, width = depth.shape
    fx, fy, cx, cy = intrinsics
    scale_x, scale_y = width / 640, height / 480  # intrinsics are given for 640x480
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    z = depth.astype(np.float64)
    points = np.stack([(u - cx * scale_x) / (fx * scale_x) * z, (v - cy * scale_y) / (fy * scale_y) * z, z], -1)
    good = np.isfinite(z) & (z > 0)
    if smooth > 1:
        points = np.stack([ndimage.uniform_filter(points[..., k], smooth, mode="nearest") for k in range(3)], -1)
    along_x = np.zeros_like(points)
    along_y = np.zeros_like(points)
    along_x[:, 1:-1] = points[:, 2:] - points[:, :-2]
    along_y[1:-1] = points[2:] - points[:-2]
    normals = np.cross(along_x, along_y)  # x right, y down: away from the camera; turned below
    length = np.linalg.norm(normals, axis=-1)
    normals = normals / np.maximum(length, 1e-12)[..., None]
    facing_away = (normals * points).sum(-1) > 0
    normals[facing_away] *= -1
    mask = good & (length > 0)
    mask &= ndimage.minimum_filter(good.astype(np.uint8), size=3, mode="constant", cval=0).astype(bool)
    if valid is not None:
        mask &= valid
    mask[[0, -1], :] = False
    mask[:, [0, -1]] = False
    return normals.astype(np.float32), mask


def _read_splits(path: Path, n_images: int) -> dict[str, list[int]]:
    """0-based image indices of train and test from splits.mat (1-based trainNdxs, testNdxs)."""
    import scipy.io
    try:
        content = scipy.io.loadmat(str(path))
    except (OSError, ValueError, NotImplementedError, TypeError) as error:
        raise SslBenchError(f"cannot read splits file {path} ({error}); {_MAT_HINT}") from None
    splits = {}
    for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        if key not in content:
            keys = sorted(k for k in content if not k.startswith("__"))
            raise SslBenchError(f"splits file {path} has no '{key}' (it holds: {', '.join(keys) or 'nothing'}); "
                                f"{_MAT_HINT}")
        indices = np.asarray(content[key]).astype(np.int64).ravel()
        bad = indices[(indices < 1) | (indices > n_images)]
        if len(bad):
            raise SslBenchError(f"splits file {path}: {key} names image {int(bad[0])}, but the .mat holds images "
                                f"1..{n_images}")
        splits[split] = sorted(set((indices - 1).tolist()))
    return splits


def convert_mat(mat: Path, splits: Path, out: Path, smooth: int = 5, normals_dir: Path | None = None) -> Path:
    """`ssl-bench make-data nyuv2-from-mat`: nyu_depth_v2_labeled.mat + splits.mat -> out/{images,normals,masks}/
    ID.png and out/splits/{train,test}.txt, ID = the 1-based image number on 4 digits (0001..1449).

    The .mat holds no surface normals. With `normals_dir` they are the ground truth published NYUv2 numbers
    use, one file per image in its distributed layout (benchmark.data.nyuv2_normals); otherwise they are
    computed from 'depths' (normals_from_depth), masked to pixels with measured depth ('rawDepths' > 0) when
    the file has it, and differ from that ground truth. out/normals_source.txt says which (reports show
    published rows only beside ground truth).
    """
    import h5py
    from benchmark.data.nyuv2_normals import ground_truth_file, read_ground_truth
    from benchmark.data.published import GROUND_TRUTH, NORMALS_SOURCE
    from benchmark.data.synthetic import encode_normals
    mat, out = Path(mat).expanduser(), Path(out).expanduser()
    require_file(mat, "NYUv2 .mat file", _MAT_HINT)
    require_file(Path(splits).expanduser(), "NYUv2 splits file", _MAT_HINT)
    if normals_dir is not None:
        normals_dir = require_dir(Path(normals_dir).expanduser(), "NYUv2 ground-truth normals", _MAT_HINT)
    try:
        handle = h5py.File(mat, "r")
    except OSError as error:
        raise SslBenchError(f"{mat} is not a MATLAB v7.3 (HDF5) file ({error}); {_MAT_HINT}") from None
    with handle:
        missing = [key for key in ("images", "depths") if key not in handle]
        if missing:
            raise SslBenchError(f"{mat} has no '{missing[0]}' (it holds: {', '.join(sorted(handle)) or 'nothing'}); "
                                f"{_MAT_HINT}")
        images, depths = handle["images"], handle["depths"]
        raw = handle["rawDepths"] if "rawDepths" in handle else None
        # MATLAB's column-major H x W x 3 x N reads as N x 3 x W x H; depths H x W x N as N x W x H
        if images.ndim != 4 or images.shape[1] != 3 or depths.shape != (images.shape[0], *images.shape[2:]):
            raise SslBenchError(f"{mat}: 'images' {images.shape} and 'depths' {depths.shape} are not the labelled "
                                f"set's layout (N x 3 x W x H and N x W x H); {_MAT_HINT}")
        if raw is not None and raw.shape != depths.shape:
            raise SslBenchError(f"{mat}: 'rawDepths' {raw.shape} differs from 'depths' {depths.shape}; {_MAT_HINT}")
        n_images = images.shape[0]
        chosen = _read_splits(Path(splits).expanduser(), n_images)
        for sub in ("images", "normals", "masks", "splits"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        for k in sorted(set(chosen["train"]) | set(chosen["test"])):
            image_id = f"{k + 1:04d}"
            depth = np.asarray(depths[k]).T
            if normals_dir is not None:
                normals, mask = read_ground_truth(ground_truth_file(normals_dir, k + 1), depth.shape)
            else:
                measured = np.asarray(raw[k]).T > 0 if raw is not None else None
                normals, mask = normals_from_depth(depth, smooth=smooth, valid=measured)
            Image.fromarray(np.ascontiguousarray(np.asarray(images[k]).transpose(2, 1, 0))).save(
                out / "images" / f"{image_id}.png")
            Image.fromarray(encode_normals(normals)).save(out / "normals" / f"{image_id}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{image_id}.png")
    for split, indices in chosen.items():
        (out / "splits" / f"{split}.txt").write_text("".join(f"{k + 1:04d}\n" for k in indices))
    source = (f"{GROUND_TRUTH}: {normals_dir}" if normals_dir is not None else
              "computed from depth (not Ladicky et al.'s ground truth)")
    (out / NORMALS_SOURCE).write_text(source + "\n")
    return out
