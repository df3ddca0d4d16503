"""The dataset interface every protocol reads through."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch.utils.data

from benchmark.data.subset import balanced_subset, describe_subset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Task = Literal["multiclass", "multilabel", "dense"]


class ImageDataset(ABC):
    """One labelled image dataset with named splits.

    Labels: `multiclass` -> int64 (N,) class indices; `multilabel` -> int8 (N, C)
    with 1 present, 0 absent, -1 difficult-only (VOC); `dense` -> per-pixel
    targets read by the protocol through `targets(split, i)`.
    """

    name: ClassVar[str]
    task: ClassVar[Task]
    splits: ClassVar[tuple[str, ...]]
    train_split: ClassVar[str]
    test_split: ClassVar[str]
    provides: ClassVar[frozenset[str]] = frozenset()  # targets: labels, class_labels, multilabel, boxes, normals
    native_size: ClassVar[int | None] = None
    normalization: ClassVar[tuple[tuple[float, ...], tuple[float, ...]] | None] = None

    def __init__(self, root: Path | None, limit: int | None = None, seed: int = 0) -> None:
        self.root = root
        self.limit = limit
        self.seed = seed

    def subset(self, labels: np.ndarray) -> np.ndarray:
        """Sorted indices of the items of a split that `limit` keeps: seeded, classes taking turns (see data.subset)."""
        return balanced_subset(labels, self.limit, self.seed)

    @property
    @abstractmethod
    def classes(self) -> list[str]:
        """Class names, index order."""

    @abstractmethod
    def ids(self, split: str) -> list[str]:
        """Image ids of a split, in a fixed order (sorted by id where the format has ids)."""

    @abstractmethod
    def labels(self, split: str) -> np.ndarray:
        """Labels of a split, aligned with ids(split)."""

    @abstractmethod
    def open_split(self, split: str, transform: Any) -> torch.utils.data.Dataset:
        """A torch Dataset whose item i is (transform(image i), i); corrupt images raise SslBenchError naming the file."""

    @abstractmethod
    def digest(self) -> str:
        """sha256 over what defines the data: split lists, labels, image names and contents."""

    def eval_transform(self, mean: tuple[float, ...] = IMAGENET_MEAN,
                       std: tuple[float, ...] = IMAGENET_STD, size: int = 224) -> Any:
        """PROTOCOLS.md's evaluation transform: Resize(256), Resize((size, size)), ToTensor, Normalize."""
        from torchvision import transforms
        return transforms.Compose([
            transforms.Resize(round(size * 256 / 224)),
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])

    def frame_transform(self, size: int) -> Any:
        """PIL -> PIL: the frame a pretraining recipe's views are cut from, as `eval_transform(size)` frames it.

        None (the image as read) unless the evaluation transform adds something
        around the image (Fashion-MNIST's 2-pixel pad to 32x32): a recipe's
        RandomResizedCrop at scale 1 must then show the object at the scale and
        place the evaluation shows it.
        """
        return None

    def train_transform(self, mean: tuple[float, ...] = IMAGENET_MEAN,
                        std: tuple[float, ...] = IMAGENET_STD, size: int = 224) -> Any:
        """Training augmentation of the linear and fine-tuning protocols: RandomResizedCrop, flip, Normalize."""
        from torchvision import transforms
        return transforms.Compose([
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])

    def test_transform(self, mean: tuple[float, ...] = IMAGENET_MEAN,
                       std: tuple[float, ...] = IMAGENET_STD, size: int = 224) -> Any:
        """Test transform of the linear and fine-tuning protocols: Resize(256 at 224), CenterCrop, Normalize."""
        from torchvision import transforms
        return transforms.Compose([
            transforms.Resize(round(size * 256 / 224)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])

    def present_splits(self) -> tuple[str, ...]:
        """The splits found on disk (all of them unless a format lets some be absent); digests cover these."""
        return self.splits

    def describe(self) -> dict[str, Any]:
        """What a result record stores about the dataset."""
        return {"name": self.name, "root": str(self.root) if self.root else None,
                "splits": {s: len(self.ids(s)) for s in self.present_splits()},
                **describe_subset(self.limit, self.seed), "digest": self.digest()}
