"""The protocol interface and the context a protocol runs in.

A protocol is a small class: a frozen Config dataclass (every constant, with
defaults, validated in __post_init__), the metrics it reports (`metrics`), what
it needs from a dataset (`needs`) and `run(ctx, config) -> ProtocolResult`.
It never prints and never opens another protocol's files. It gets frozen
features only through `ctx.features`, which caches them; a protocol that
trains takes its own copy of the trunk (`ctx.trunk_copy`) and trains it with
`ctx.trainer`, so fine-tuned weights never reach the feature cache.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from benchmark.record import WHOLE_NETWORK  # noqa: F401 - re-exported: protocols import it from here

if TYPE_CHECKING:
    import torch

    from benchmark.data.base import ImageDataset
    from benchmark.results import PartialState
    from benchmark.training import Trainer, TrainSpec
    from checkpoints.models import Backbone

T = TypeVar("T")



@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One metric a protocol reports: its name, its direction (None: a spread, not a score), whether primary."""

    name: str
    higher_is_better: bool | None = True
    primary: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the network sees, resolved once by the runner: square side and normalisation."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def eval_transform(self, dataset: ImageDataset) -> Any:
        """The feature-extraction transform of PROTOCOLS.md (Resize, Resize to a square)."""
        return dataset.eval_transform(self.mean, self.std, self.size)

    def train_transform(self, dataset: ImageDataset) -> Any:
        """Training augmentation: RandomResizedCrop and horizontal flip at the dataset's size."""
        return dataset.train_transform(self.mean, self.std, self.size)

    def test_transform(self, dataset: ImageDataset) -> Any:
        """Test transform of the trained protocols: Resize then CenterCrop."""
        return dataset.test_transform(self.mean, self.std, self.size)

    def describe(self) -> dict[str, Any]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}


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
    bootstrap: details.per_image[tap] = {n_images, correct_bits: {metric: packed 0/1}}
    or details.per_image = {tap, ids, scores, labels} (see benchmark.bootstrap.evidence_for).
    """

    metrics: dict[str, dict[str, float]]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunContext:
    """Everything a protocol may use: the frozen backbone, taps, dataset, cached features, training, progress.

    state keeps JSON pieces of an interrupted run; artifacts is the run's own
    folder (training states, TensorBoard logs, written predictions), kept
    beside its record; identity names the run (checkpoint, protocol, config,
    dataset, seed) so a training state of another run is refused on resume.
    """

    backbone: Backbone
    taps: tuple[str, ...]
    dataset: ImageDataset
    device: torch.device
    seed: int
    state: PartialState
    extract: Callable[[str, tuple[str, ...]], FeatureSet]
    progress_factory: Callable[..., Any]
    log: Callable[[str], None]
    input: InputSpec | None = None
    artifacts: Path | None = None
    resume: bool = False
    identity: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int = 64
    workers: int = 0
    extract_rows: Callable[[str, tuple[str, ...], np.ndarray], FeatureSet] | None = None
    cache_dir: Path | None = None  # the run's --cache folder (None: --no-cache); protocols cache derived data there

    def features(self, split: str, taps: Iterable[str] | None = None, rows: Sequence[int] | None = None) -> FeatureSet:
        """Pooled features of `split` for `taps` (default: the run's taps; () for labels and ids only), from the
        cache when present; rows: only the images at these positions of the split, in that order, cached per
        image (a subset of a large split without extracting all of it)."""
        wanted = tuple(taps) if taps is not None else self.taps
        if rows is None:
            return self.extract(split, wanted)
        if self.extract_rows is None:
            raise RuntimeError("RunContext.features(rows=...) needs extract_rows")
        return self.extract_rows(split, wanted, np.asarray(rows, dtype=np.int64))

    def progress(self, iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        """Iterate with a progress bar (tqdm on a terminal, quiet otherwise)."""
        return self.progress_factory(iterable, desc=desc, total=total)

    def trunk_copy(self) -> Backbone:
        """A private copy of the checkpoint's trunk on the run's device, for a protocol to train or freeze."""
        return copy.deepcopy(self.backbone).to(self.device)

    def trainer(self, model: torch.nn.Module, spec: TrainSpec) -> Trainer:
        """The training engine for `model` (loading with the run's --workers), saving states under the run's
        artifacts and resuming when asked."""
        from benchmark.training import Trainer
        spec = dataclasses.replace(spec, workers=self.workers)
        if self.artifacts is None:
            raise RuntimeError("this run context has no artifacts folder to keep training states in")
        return Trainer(model, spec, self.device, self.artifacts, self.identity, resume=self.resume, log=self.log,
                       progress=self.progress_factory)


class Protocol(ABC):
    """Base class of every protocol plugin; register it with `@PROTOCOLS.register(name)`."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Config: ClassVar[type]
    default_dataset: ClassVar[str]
    default_taps: ClassVar[tuple[str, ...] | str | None] = None  # None: the arch's defaults; "last": its last tap
    needs: ClassVar[tuple[str, ...]] = ("class_labels",)  # targets the dataset must provide (ImageDataset.provides)
    per_tap: ClassVar[bool] = True  # False: one result for the whole network, under WHOLE_NETWORK

    @abstractmethod
    def metrics(self, config: Any, dataset: ImageDataset) -> tuple[MetricSpec, ...]:
        """Every metric this run may report, exactly one of them primary."""

    def primary_metric(self, config: Any, dataset: ImageDataset) -> str:
        """The headline metric of a result (what summary tables and the regression gate lead with)."""
        return next(spec.name for spec in self.metrics(config, dataset) if spec.primary)

    @abstractmethod
    def run(self, ctx: RunContext, config: Any) -> ProtocolResult:
        """Compute metrics for every tap in ctx.taps (or under WHOLE_NETWORK when not per_tap)."""
