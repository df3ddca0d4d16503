"""`ssl-bench make-data nyuv2-from-mat` on a tiny .mat pair written in the official layout (h5py, scipy)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from benchmark.cli import main
from benchmark.data.nyuv2 import NYU_INTRINSICS, NyuV2, normals_from_depth

H, W = 48, 64


def plane_depth(normal: np.ndarray, offset: float) -> np.ndarray:
    """Depth (H, W) of the plane normal . P = offset seen by the NYU camera scaled to W x H."""
    fx, fy, cx, cy = NYU_INTRINSICS
    s = W / 640
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - cx * s) / (fx * s), (v - cy * s) / (fy * s), np.ones_like(u)], -1)
    return offset / (rays @ normal)


def write_official(folder: Path, n_images: int = 5, train=(1, 3, 4), test=(2, 5)) -> tuple[Path, Path, list]:
    """nyu_depth_v2_labeled.mat as MATLAB v7.3 stores it (N x 3 x W x H images, N x W x H depths) + splits.mat."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(n_images, H, W, 3), dtype=np.uint8)
    normals, depths, raws = [], [], []
    for _ in range(n_images):
        n = np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), -1.0])
        n /= np.linalg.norm(n)
        depth = plane_depth(n, -rng.uniform(2, 4))
        raw = depth.copy()
        raw[5:9, 10:20] = 0  # unmeasured pixels
        normals.append(n), depths.append(depth), raws.append(raw)
    mat = folder / "nyu_depth_v2_labeled.mat"
    with h5py.File(mat, "w") as handle:
        handle["images"] = images.transpose(0, 3, 2, 1)
        handle["depths"] = np.stack(depths).transpose(0, 2, 1).astype(np.float32)
        handle["rawDepths"] = np.stack(raws).transpose(0, 2, 1).astype(np.float32)
        handle["labels"] = np.zeros((n_images, W, H), np.uint16)
    splits = folder / "splits.mat"
    scipy.io.savemat(splits, {"trainNdxs": np.array(train, float)[:, None], "testNdxs": np.array(test, float)[:, None]})
    return mat, splits, [images, normals]


def test_convert_official_layout(capsys, tmp_path):
    mat, splits, (images, normals) = write_official(tmp_path)
    out = tmp_path / "nyu"
    assert main(["make-data", "nyuv2-from-mat", "--mat", str(mat), "--splits", str(splits), "--out", str(out)]) == 0
    nyu = NyuV2(out)
    assert nyu.ids("train") == ["0001", "0003", "0004"] and nyu.ids("test") == ["0002", "0005"]
    for split in nyu.splits:
        for i, image_id in enumerate(nyu.ids(split)):
            k = int(image_id) - 1
            assert np.array_equal(np.asarray(nyu.open_split(split, None)[i][0]), images[k])
            gt, mask = nyu.targets(split, i)
            assert gt.shape == (H, W, 3) and mask.shape == (H, W)
            assert not mask[5:9, 10:20].any() and not mask[0].any() and mask[10:40, 10:50].all()
            angles = np.degrees(np.arccos(np.clip(gt[mask] @ normals[k], -1, 1)))
            assert angles.max() < 1.0  # the plane's normal, within 8-bit quantisation
    assert nyu.check_split_files("train") == [(W, H)] * 3


def test_normals_from_depth_face_the_camera():
    normal = np.array([0.3, -0.2, -1.0]) / np.linalg.norm([0.3, -0.2, -1.0])
    got, mask = normals_from_depth(plane_depth(normal, -3.0))
    np.testing.assert_allclose(got[mask], np.broadcast_to(normal, got[mask].shape), atol=1e-4)


def _v5_mat(folder, mat, splits):
    scipy.io.savemat(mat, {"images": np.zeros((2, 2))})
    return "HDF5"


def _no_depths(folder, mat, splits):
    with h5py.File(mat, "w") as handle:
        handle["images"] = np.zeros((5, 3, W, H), np.uint8)
    return "'depths'"


def _wrong_shapes(folder, mat, splits):
    with h5py.File(mat, "a") as handle:
        del handle["depths"]
        handle["depths"] = np.zeros((5, H, W), np.float32)
    return "layout"


def _split_out_of_range(folder, mat, splits):
    scipy.io.savemat(splits, {"trainNdxs": np.array([[1.0], [9.0]]), "testNdxs": np.array([[2.0]])})
    return "image 9"


def _split_key_missing(folder, mat, splits):
    scipy.io.savemat(splits, {"train": np.array([[1.0]])})
    return "trainNdxs"


@pytest.mark.parametrize("spoil", [_v5_mat, _no_depths, _wrong_shapes, _split_out_of_range, _split_key_missing])
def test_bad_mat_files_are_one_line(capsys, tmp_path, spoil):
    mat, splits, _ = write_official(tmp_path)
    fragment = spoil(tmp_path, mat, splits)
    code = main(["make-data", "nyuv2-from-mat", "--mat", str(mat), "--splits", str(splits),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


def test_missing_mat_arguments(capsys, tmp_path):
    assert main(["make-data", "nyuv2-from-mat", "--out", str(tmp_path)]) == 2
    assert "--mat" in capsys.readouterr().err


def random_normals(rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float64 unit normals pointing anywhere: not what depth would give."""
    n = rng.normal(size=(H, W, 3))
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def write_ground_truth(folder: Path, numbers: list[int], v73: tuple[int, ...] = ()) -> dict[int, tuple]:
    """Per-image files as MarrRevisited distributes them: nm_NNNNNN.mat with nx, ny, nz, depthValid (MATLAB v5;
    the numbers in `v73` as v7.3 HDF5, arrays transposed as MATLAB stores them)."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    truth = {}
    for number in numbers:
        normals = random_normals(rng)
        valid = rng.random((H, W)) > 0.3
        arrays = {"nx": normals[..., 0], "ny": normals[..., 1], "nz": normals[..., 2], "depthValid": valid * 1.0}
        if number in v73:
            with h5py.File(folder / f"{number:06d}.mat", "w") as handle:
                for key, value in arrays.items():
                    handle[key] = value.T
        else:
            scipy.io.savemat(folder / f"nm_{number:06d}.mat", arrays)
        truth[number] = (normals, valid)
    return truth


def test_ground_truth_normals_are_imported_instead_of_depth_normals(capsys, tmp_path):
    mat, splits, _ = write_official(tmp_path)
    truth = write_ground_truth(tmp_path / "GT_Normals", [1, 2, 3, 4, 5], v73=(2,))
    out = tmp_path / "nyu"
    assert main(["make-data", "nyuv2-from-mat", "--mat", str(mat), "--splits", str(splits), "--out", str(out),
                 "--normals", str(tmp_path / "GT_Normals")]) == 0
    nyu = NyuV2(out)
    for split in nyu.splits:
        for i, image_id in enumerate(nyu.ids(split)):
            normals, valid = truth[int(image_id)]
            gt, mask = nyu.targets(split, i)
            assert np.array_equal(mask, valid)
            angles = np.degrees(np.arccos(np.clip((gt[mask] * normals[valid]).sum(-1), -1, 1)))
            assert angles.max() < 1.0  # the file's normals, within 8-bit quantisation
    assert (out / "normals_source.txt").read_text().startswith("ground truth: ")
    main(["make-data", "nyuv2-from-mat", "--mat", str(mat), "--splits", str(splits), "--out", str(tmp_path / "d")])
    assert (tmp_path / "d" / "normals_source.txt").read_text().startswith("computed from depth")


def _missing_image(folder):
    (folder / "nm_000003.mat").unlink()
    return "no ground-truth normals for image 3"


def _wrong_size(folder):
    scipy.io.savemat(folder / "nm_000003.mat", {k: np.zeros((4, 4)) for k in ("nx", "ny", "nz", "depthValid")})
    return "do not all match the image's 48x64"


def _not_unit(folder):
    scipy.io.savemat(folder / "nm_000003.mat", {**{k: np.full((H, W), 0.2) for k in ("nx", "ny", "nz")},
                                                "depthValid": np.ones((H, W))})
    return "valid pixels are not unit normals"


def _no_valid_key(folder):
    scipy.io.savemat(folder / "nm_000003.mat", {k: np.ones((H, W)) for k in ("nx", "ny", "nz")})
    return "has no 'depthValid'"


@pytest.mark.parametrize("spoil", [_missing_image, _wrong_size, _not_unit, _no_valid_key])
def test_bad_ground_truth_normals_are_one_line(capsys, tmp_path, spoil):
    mat, splits, _ = write_official(tmp_path)
    write_ground_truth(tmp_path / "gt", [1, 2, 3, 4, 5])
    fragment = spoil(tmp_path / "gt")
    code = main(["make-data", "nyuv2-from-mat", "--mat", str(mat), "--splits", str(splits),
                 "--out", str(tmp_path / "out"), "--normals", str(tmp_path / "gt")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]
