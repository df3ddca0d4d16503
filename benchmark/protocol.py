"""The protocol interface and the context a protocol runs in.

A protocol is a small class: a frozen Config dataclass (every constant, with
defaults, validated in __post_init__) and `run(ctx, config) -> ProtocolResult`.
It never prints, never opens another protocol's files, and gets features only
through `ctx.features`, which caches them.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

    from benchmark.data.base import ImageDataset
    from benchmark.results import PartialState
    from checkpoints.models import Backbone

T = TypeVar("T")


@dataclasses.dataclass
class FeatureSet:
    """Pooled features of one split: one float32 (N, D) array per tap, plus labels and image ids."""

    features: dict[str, np.ndarray]
    labels: np.ndarray
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass
class ProtocolResult:
    """What a protocol returns: metrics per tap, plus details (per-class APs, chosen costs, scores).

    details holds JSON values and numpy arrays; the store puts the arrays (per-image
    scores, say) in the record's side file. Per-image evidence the reports can
    bootstrap: details.per_image[tap] = {k, correct_top1} or details.per_image =
    {tap, ids, scores, labels} (see benchmark.bootstrap.evidence_for).
    """

    metrics: dict[str, dict[str, float]]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunContext:
    """Everything a protocol may use: the backbone, its taps, the dataset, cached features, progress."""

    backbone: Backbone
    taps: tuple[str, ...]
    dataset: ImageDataset
    device: torch.device
    seed: int
    state: PartialState
    extract: Callable[[str, tuple[str, ...]], FeatureSet]
    progress_factory: Callable[..., Any]
    log: Callable[[str], None]

    def features(self, split: str, taps: Iterable[str] | None = None) -> FeatureSet:
        """Pooled features of `split` for `taps` (default: the run's taps), from the cache when present."""
        return self.extract(split, tuple(taps) if taps is not None else self.taps)

    def progress(self, iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        """Iterate with a progress bar (tqdm on a terminal, quiet otherwise)."""
        return self.progress_factory(iterable, desc=desc, total=total)


class Protocol(ABC):
    """Base class of every protocol plugin; register it with `@PROTOCOLS.register(name)`."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Config: ClassVar[type]
    default_dataset: ClassVar[str]
    default_taps: ClassVar[tuple[str, ...] | None] = None
    supported_tasks: ClassVar[tuple[str, ...]] = ("multiclass",)

    def primary_metric(self, config: Any) -> str:
        """The headline metric of a result (what summary tables and the regression gate lead with)."""
        raise NotImplementedError(f"protocol '{self.name}' must name its primary metric")

    @abstractmethod
    def run(self, ctx: RunContext, config: Any) -> ProtocolResult:
        """Compute metrics for every tap in ctx.taps."""
