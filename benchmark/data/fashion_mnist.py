"""Fashion-MNIST from its four IDX files (gzip or raw), kept in memory as uint8 arrays.

Without a root the files come from the Debian package dataset-fashion-mnist.
"""

from __future__ import annotations

import gzip
import subprocess
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image

from benchmark.data.base import ImageDataset
from benchmark.data.images import Digest, check_split, require_root
from benchmark.errors import SslBenchError
from benchmark.registry import DATASETS

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
MEAN, STD = 0.2860, 0.3530  # of the 60000 training images, pixel values in [0, 1]
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SUBDIRS = (".", "FashionMNIST/raw", "raw")
_IMAGE_MAGIC, _LABEL_MAGIC = 0x803, 0x801

_HINT = (f"install the Debian package {DEBIAN_PACKAGE}, or pass --data-root pointing at a folder holding "
         "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and "
         "t10k-labels-idx1-ubyte[.gz]")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (gzip or raw) of unsigned bytes as a uint8 array; a bad header or size raises SslBenchError."""
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise SslBenchError(f"cannot read IDX file {path} ({error}); re-download it") from error
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        raise SslBenchError(f"{path} is not an IDX file of the expected kind: magic number "
                            f"{'none' if found is None else hex(found)}, expected {hex(magic)}; re-download it")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise SslBenchError(f"{path} holds {len(data) - header} bytes of data, its header says shape {shape}; "
                            "the file is truncated or corrupt, re-download it")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def debian_dir() -> Path:
    """Where dpkg says the Debian package put the files, else its usual folder."""
    try:
        listed = subprocess.run(["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True, text=True, check=False).stdout
    except OSError:
        listed = ""
    for line in listed.splitlines():
        if line.endswith(f"{FILES['train'][0]}.gz"):
            return Path(line).parent
    return DEBIAN_DIR


def find_file(folders: list[Path], stem: str) -> Path:
    """The first of folder/stem.gz, folder/stem over the folders; SslBenchError listing what was tried."""
    tried = [folder / name for folder in folders for name in (f"{stem}.gz", stem)]
    for path in tried:
        if path.is_file():
            return path
    raise SslBenchError(f"Fashion-MNIST file {stem} not found (tried {', '.join(map(str, tried))}); {_HINT}")


class Arrays(torch.utils.data.Dataset):
    """Item i is (transform(PIL RGB image of images[i]), i)."""

    def __init__(self, images: np.ndarray, transform: Any) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index]).convert("RGB")
        return (self.transform(image) if self.transform is not None else image), index


@DATASETS.register("fashion_mnist")
class FashionMnist(ImageDataset):
    """Fashion-MNIST: train (60000) and test (10000) 28x28 grey images, 10 classes, shown at 32x32."""

    name = "fashion_mnist"
    task = "multiclass"
    provides = frozenset({"labels", "class_labels"})
    splits = ("train", "test")
    train_split = "train"
    test_split = "test"
    native_size = 32
    normalization = ((MEAN,) * 3, (STD,) * 3)

    def __init__(self, root: Path | None, limit: int | None = None, seed: int = 0, download: bool = False) -> None:
        super().__init__(root, limit, seed)
        if download:
            root = require_root(self.name, root, "downloading needs a folder to download into")
            self._download(root)
        if root is None:
            folders = [debian_dir()]
        else:
            root = require_root(self.name, root, _HINT)
            folders = [root / sub for sub in SUBDIRS]
        self.paths = {split: tuple(find_file(folders, stem) for stem in stems) for split, stems in FILES.items()}
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._kept: dict[str, np.ndarray] = {}  # per split: positions in the IDX file of the images kept
        self._digest: str | None = None

    @staticmethod
    def _download(root: Path) -> None:
        from torchvision.datasets import FashionMNIST
        for train in (True, False):
            try:
                FashionMNIST(str(root), train=train, download=True)
            except (OSError, RuntimeError) as error:
                raise SslBenchError(f"could not download Fashion-MNIST into {root} ({error}); "
                                    f"without internet, {_HINT}") from error

    @property
    def classes(self) -> list[str]:
        return list(CLASSES)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, 28, 28) and int64 labels (N,) of a split, limited."""
        check_split(self.name, split, self.splits)
        if split not in self._arrays:
            image_path, label_path = self.paths[split]
            images = read_idx(image_path, _IMAGE_MAGIC)
            labels = read_idx(label_path, _LABEL_MAGIC).astype(np.int64)
            if images.shape[1:] != (28, 28) or len(images) != len(labels):
                raise SslBenchError(f"{image_path} holds images of shape {images.shape} for {len(labels)} labels "
                                    f"in {label_path}; expected (N, 28, 28) with N labels")
            if labels.size and labels.max() >= len(CLASSES):
                raise SslBenchError(f"{label_path} holds label {labels.max()}; Fashion-MNIST labels are 0..9")
            kept = self._kept[split] = self.subset(labels)
            self._arrays[split] = (images[kept], labels[kept]) if len(kept) < len(labels) else (images, labels)
        return self._arrays[split]

    def ids(self, split: str) -> list[str]:
        self.arrays(split)
        return [f"{split}/{i:05d}" for i in self._kept[split]]

    def labels(self, split: str) -> np.ndarray:
        return self.arrays(split)[1]

    def open_split(self, split: str, transform: Any) -> torch.utils.data.Dataset:
        return Arrays(self.arrays(split)[0], transform)

    def digest(self) -> str:
        """sha256 over the decompressed IDX files (the data itself) and the limit."""
        if self._digest is None:
            digest = Digest()
            digest.add(str(self.limit))
            for split in self.splits:
                images, labels = self.arrays(split)
                digest.add(split, images.tobytes(), labels.tobytes())
            self._digest = digest.hexdigest()
        return self._digest

    def eval_transform(self, mean: tuple[float, ...] = normalization[0], std: tuple[float, ...] = normalization[1],
                       size: int = 32) -> Any:
        """Pad 2 to 32x32 (Resize(size) for other sizes), grey to 3 channels, ToTensor, Normalize."""
        from torchvision import transforms
        return transforms.Compose([
            transforms.Pad(2) if size == 32 else transforms.Resize(size),
            transforms.Grayscale(num_output_channels=3),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])

    def frame_transform(self, size: int) -> Any:
        """Pad 2 at 32x32 (the evaluation's frame: a 28x28 garment on a black border); None at other sizes (Resize)."""
        from torchvision import transforms
        return transforms.Pad(2) if size == 32 else None

    def train_transform(self, mean: tuple[float, ...] = normalization[0], std: tuple[float, ...] = normalization[1],
                        size: int = 32) -> Any:
        """Pad 2, RandomResizedCrop(size) and flip at the native size, grey to 3 channels, Normalize."""
        from torchvision import transforms
        return transforms.Compose([
            transforms.Pad(2),
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.Grayscale(num_output_channels=3),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])

    def test_transform(self, mean: tuple[float, ...] = normalization[0], std: tuple[float, ...] = normalization[1],
                       size: int = 32) -> Any:
        """The whole image at the native size: the evaluation transform."""
        return self.eval_transform(mean, std, size)
