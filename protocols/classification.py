"""What the classification protocols that train share: label checks, labelled training data, top-k evaluation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data
from torch import nn

from benchmark import distributed
from benchmark.accel import AmpPolicy, eval_loader, worker_errors
from benchmark.errors import SslBenchError
from benchmark.protocol import RunContext
from benchmark.training import SeededAugmentation, TrainResult, TrainSpec

TOPK = (1, 5)


@dataclasses.dataclass(frozen=True)
class LabelledSplits:
    """The train and test splits a classification protocol uses, their labels and the number of classes."""

    train: str
    test: str
    train_labels: np.ndarray
    test_labels: np.ndarray
    n_classes: int


def labelled_splits(ctx: RunContext, config: Any) -> LabelledSplits:
    """The config's splits (default: the dataset's), checked: every class has training images, one class set."""
    train = config.train_split or ctx.dataset.train_split
    test = config.test_split or ctx.dataset.test_split
    train_labels, test_labels = ctx.dataset.labels(train), ctx.dataset.labels(test)
    n_classes = check_class_coverage(ctx, train_labels, test_labels, train, test)
    return LabelledSplits(train, test, train_labels, test_labels, n_classes)


def training_details(spec: TrainSpec, result: TrainResult, **extra: Any) -> dict[str, Any]:
    """What a record keeps about training: the spec, the per-epoch history, steps, resume and time."""
    return {"spec": spec.describe(), "history": result.history, "steps": result.steps,
            "resumed_from_step": result.resumed_from_step, "seconds": round(result.seconds, 3), **extra}


def check_class_coverage(ctx: RunContext, train: np.ndarray, test: np.ndarray, train_split: str,
                         test_split: str, selected: str = "") -> int:
    """The number of classes; SslBenchError when a class has no training image or the test split has unknown ones."""
    classes = list(ctx.dataset.classes)
    counts = np.bincount(train, minlength=len(classes))
    empty = [classes[c] for c in np.flatnonzero(counts == 0)]
    if empty:
        raise SslBenchError(f"class '{empty[0]}' has no images in split '{train_split}' of dataset "
                            f"'{ctx.dataset.name}'{selected} ({len(empty)} such classes); every class needs "
                            "training images: add images, or choose a larger fraction or another subset")
    unknown = sorted(set(np.unique(test).tolist()) - set(range(len(classes))))
    if unknown:
        raise SslBenchError(f"split '{test_split}' of dataset '{ctx.dataset.name}' has labels {unknown[:5]} that "
                            f"split '{train_split}' lacks; train and test must share one class set")
    return len(classes)


class Subset(torch.utils.data.Dataset):
    """Items `indices` of a dataset, keeping each item's (image, original index) shape."""

    def __init__(self, dataset: torch.utils.data.Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]


def augmented_images(ctx: RunContext, split: str, indices: Sequence[int] | None = None) -> SeededAugmentation:
    """The split's images (optionally a subset) under the dataset's training augmentation, seeded per image."""
    images = ctx.dataset.open_split(split, None)
    if indices is not None:
        images = Subset(images, indices)
    return SeededAugmentation(images, ctx.input.train_transform(ctx.dataset), seed=ctx.seed)


def labelled_step(labels: torch.Tensor, logits_of: Callable[[nn.Module, Any], dict[str, torch.Tensor]]
                  ) -> Callable[[nn.Module, Any], torch.Tensor]:
    """A step function: sum over heads of the cross-entropy of their logits against labels[index]."""
    def step(model: nn.Module, batch: Any) -> torch.Tensor:
        inputs, index = batch
        target = labels.to(index.device)[index]
        logits = logits_of(model, inputs)
        return sum(nn.functional.cross_entropy(out.float(), target) for out in logits.values())
    return step


@torch.no_grad()
def evaluate_topk(ctx: RunContext, model: nn.Module, data: torch.utils.data.Dataset, labels: np.ndarray,
                  policy: AmpPolicy, batch_size: int, desc: str) -> dict[str, np.ndarray]:
    """Per head, the 0-based rank of each image's true class among the logits, (N,), over every process's shard."""
    loader, rows = eval_loader(data, batch_size, ctx.workers, ctx.device)
    indices = np.empty(rows, dtype=np.int64)
    ranks: dict[str, np.ndarray] = {}
    position = 0
    target = torch.from_numpy(labels)
    was_training = model.training
    model.eval()
    try:
        with worker_errors():
            for inputs, index in ctx.progress(loader, desc=desc, total=len(loader)):
                inputs = policy.prepare_input(inputs, ctx.device) if isinstance(inputs, torch.Tensor) else {
                    key: value.to(ctx.device) for key, value in inputs.items()}
                with policy.autocast():
                    logits = model(inputs)
                true = target[index]
                end = position + len(index)
                for head, out in logits.items():
                    out = out.float().cpu()
                    ranks.setdefault(head, np.empty(rows, dtype=np.int64))[position:end] = (
                        (out > out[torch.arange(len(true)), true][:, None]).sum(1).numpy())
                indices[position:end] = index.numpy()
                position = end
    finally:
        model.train(was_training)
    return {head: distributed.gather_rows(rank, indices, len(labels)) for head, rank in ranks.items()}


def topk_metrics(rank: np.ndarray) -> dict[str, float]:
    """top-1 and top-5 accuracy (x 100) from true-class ranks."""
    return {f"top{k}": 100.0 * float(np.mean(rank < k)) for k in TOPK}
