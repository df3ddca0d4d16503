"""Helpers shared by the file-based datasets: path and split checks, image loading, digests."""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image

from benchmark.data.base import ImageDataset
from benchmark.errors import SslBenchError, did_you_mean
from benchmark.filehash import file_sha256s


def load_rgb(path: Path) -> Image.Image:
    """Open an image file as a fully decoded PIL RGB image; an unreadable file raises SslBenchError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SslBenchError(f"cannot read image {path} ({reason}); replace or re-extract this file") from error


class ImageFiles(torch.utils.data.Dataset):
    """Item i is (transform(RGB image of paths[i]), i)."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], Any] | None) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = load_rgb(self.paths[index])
        return (self.transform(image) if self.transform is not None else image), index


def check_split(dataset: str, split: str, splits: Iterable[str]) -> None:
    """Raise SslBenchError when `split` is not one of the dataset's splits."""
    splits = list(splits)
    if split not in splits:
        raise SslBenchError(f"dataset '{dataset}' has no split '{split}'.{did_you_mean(split, splits)} "
                            f"Splits: {', '.join(splits)}")


def require_root(dataset: str, root: Path | None, hint: str) -> Path:
    """The dataset root as a Path; None or a missing folder raises SslBenchError with `hint`."""
    if root is None:
        raise SslBenchError(f"dataset '{dataset}' needs --data-root: {hint}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SslBenchError(f"data root {root} of dataset '{dataset}' is not a folder: {hint}")
    return root


def require_file(path: Path, what: str, hint: str) -> Path:
    """`path` when it is a file, else SslBenchError naming it."""
    if not path.is_file():
        raise SslBenchError(f"missing {what} {path}: {hint}")
    return path


def require_dir(path: Path, what: str, hint: str) -> Path:
    """`path` when it is a folder, else SslBenchError naming it."""
    if not path.is_dir():
        raise SslBenchError(f"missing {what} folder {path}: {hint}")
    return path


class Digest:
    """sha256 over a stream of fields, each written with its length so that concatenations cannot collide."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, *fields: str | bytes | int) -> None:
        for field in fields:
            data = field if isinstance(field, bytes) else str(field).encode()
            self._hash.update(len(data).to_bytes(8, "little"))
            self._hash.update(data)

    def add_files(self, base: Path, paths: Iterable[Path]) -> None:
        """Add each file's name relative to `base` and the sha256 of its bytes (read once, then remembered)."""
        paths = list(paths)
        for path, sha256 in zip(paths, file_sha256s(paths)):
            self.add(path.relative_to(base).as_posix(), sha256)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class ListedImages(ImageDataset):
    """Single-label images listed per split as (path relative to the split's image folder, class index)."""

    task = "multiclass"
    provides = frozenset({"labels", "class_labels"})

    def __init__(self, root: Path | None, limit: int | None = None, seed: int = 0) -> None:
        super().__init__(root, limit, seed)
        self._classes: list[str] = []
        self._digest: str | None = None

    def _limited(self, pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The (relative path, label) pairs that --limit keeps, in their order."""
        return [pairs[i] for i in self.subset(np.asarray([label for _, label in pairs], dtype=np.int64))]

    @abstractmethod
    def _split_pairs(self, split: str) -> list[tuple[str, int]]:
        """The (relative path, label) pairs of a split, in id order, limited."""

    @abstractmethod
    def _image_dir(self, split: str) -> Path:
        """The folder a split's listed paths are relative to."""

    @abstractmethod
    def _files_root(self) -> Path:
        """The folder the digest names image files relative to."""

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    def ids(self, split: str) -> list[str]:
        return [path for path, _ in self._split_pairs(split)]

    def labels(self, split: str) -> np.ndarray:
        return np.asarray([label for _, label in self._split_pairs(split)], dtype=np.int64)

    def open_split(self, split: str, transform: Callable[[Image.Image], Any] | None) -> torch.utils.data.Dataset:
        return ImageFiles([self._image_dir(split) / path for path in self.ids(split)], transform)

    def digest(self) -> str:
        if self._digest is None:
            digest = Digest()
            digest.add(*self._classes)
            for split in self.splits:
                digest.add(split, *self.ids(split), self.labels(split).tobytes())
                digest.add_files(self._files_root(), [self._image_dir(split) / path for path in self.ids(split)])
            self._digest = digest.hexdigest()
        return self._digest
