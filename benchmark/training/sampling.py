"""Reproducible, resumable data order and augmentation for training.

The order of epoch e is a permutation drawn from (seed, e) and sharded by rank
(DistributedSampler's scheme), and it can start mid-epoch. The random
augmentation of image i in epoch e is drawn from its own generator seeded by
(seed, e, i): it does not depend on the number of loader workers, the global
RNG, or whether the run was interrupted and resumed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.data
from torch.utils.data.distributed import DistributedSampler

from benchmark import distributed


class ResumableSampler(DistributedSampler):
    """DistributedSampler (works without a process group) that can skip the first `start` items of an epoch."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int, shuffle: bool = True,
                 drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=distributed.get_world_size(), rank=distributed.get_rank(),
                         shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Iterate epoch `epoch` from its `start`-th item (on this rank)."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one (run seed, epoch, image) triple."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SeededAugmentation(torch.utils.data.Dataset):
    """Wraps a dataset whose items are (image, index, ...): transform(image) runs under its own seeded RNG.

    A transform with `takes_index = True` (per-image state, such as
    ContrastiveCrop's boxes) is called as transform(image, index), with the
    index the item carries (its place in the split, also under a Subset).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, transform: Callable[[Any], Any], seed: int) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        image, *rest = self.dataset[index]
        seed = sample_seed(self.seed, self.epoch, index)
        python_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                image = (self.transform(image, rest[0]) if getattr(self.transform, "takes_index", False)
                         else self.transform(image))
            finally:
                random.setstate(python_state)
        return (image, *rest)
