"""Ground-truth NYUv2 surface normals in the layout they are commonly distributed in.

The normals that published NYUv2 numbers are measured against (Ladicky et al.
2014, as processed by Wang, Fouhey & Gupta 2015 and distributed with Bansal
et al.'s MarrRevisited code and FAIR's self-supervision benchmark) come as one
MATLAB file per labelled image, `nm_NNNNNN.mat` (MarrRevisited's
GT_Normals/) or `NNNNNN.mat` (FAIR's surfacenormal_metadata/), NNNNNN the
1-based image number of nyu_depth_v2_labeled.mat on 6 digits. Each holds
`nx`, `ny`, `nz` (H x W, the image's 480 x 640) and `depthValid` (H x W,
nonzero where the normal is valid). Files saved as MATLAB v7.3 (HDF5) are read
too. Normals are kept in the file's own coordinate frame and renormalised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.errors import SslBenchError

NAMES = ("nm_{:06d}.mat", "{:06d}.mat")
KEYS = ("nx", "ny", "nz", "depthValid")
UNIT_TOLERANCE = 0.05  # |length - 1| allowed on a valid pixel before renormalising
HINT = ("pass --normals DIR holding one nm_NNNNNN.mat (or NNNNNN.mat) per image with nx, ny, nz and depthValid, "
        "NNNNNN the 1-based image number")


def ground_truth_file(folder: Path, number: int) -> Path:
    """The ground-truth file of 1-based image `number` in `folder`, under either distributed name."""
    for name in NAMES:
        path = folder / name.format(number)
        if path.is_file():
            return path
    raise SslBenchError(f"no ground-truth normals for image {number} in {folder} (looked for "
                        f"{' or '.join(name.format(number) for name in NAMES)}); {HINT}")


def _load(path: Path) -> dict[str, np.ndarray]:
    """nx, ny, nz and depthValid as (H, W) arrays, from a MATLAB v5 or v7.3 file."""
    import h5py
    import scipy.io
    try:
        if h5py.is_hdf5(path):  # MATLAB v7.3: arrays stored transposed
            with h5py.File(path, "r") as handle:
                content = {key: np.asarray(handle[key]).T for key in KEYS if key in handle}
        else:
            content = scipy.io.loadmat(str(path), variable_names=KEYS)
    except (OSError, ValueError, TypeError, NotImplementedError) as error:
        raise SslBenchError(f"cannot read ground-truth normals {path} ({error}); {HINT}") from None
    missing = [key for key in KEYS if key not in content]
    if missing:
        raise SslBenchError(f"{path} has no '{missing[0]}'; {HINT}")
    return {key: np.asarray(content[key]) for key in KEYS}


def read_ground_truth(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """float32 (H, W, 3) unit normals and the valid mask (H, W) of one file, checked against the image's shape."""
    arrays = _load(path)
    shapes = {key: array.shape for key, array in arrays.items()}
    if any(found != tuple(shape) for found in shapes.values()):
        raise SslBenchError(f"{path}: arrays {shapes} do not all match the image's {shape[0]}x{shape[1]}; {HINT}")
    normals = np.stack([arrays[key].astype(np.float64) for key in KEYS[:3]], axis=-1)
    length = np.linalg.norm(normals, axis=-1)
    mask = (arrays["depthValid"] != 0) & np.isfinite(length)
    off = mask & (np.abs(length - 1) > UNIT_TOLERANCE)
    if off.any():
        raise SslBenchError(f"{path}: {int(off.sum())} valid pixels are not unit normals (a length of "
                            f"{float(length[off][0]):.3f}); {HINT}")
    if not mask.any():
        raise SslBenchError(f"{path}: depthValid marks no valid pixel; {HINT}")
    normals = np.where(mask[..., None], normals / np.maximum(length, 1e-12)[..., None], 0.0)
    return normals.astype(np.float32), mask
