"""run(options) -> result record: resolve checkpoint, protocol config, dataset; run; store atomically.

The runner never names a protocol, dataset or architecture: it talks to the
registries and the interfaces only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark import __version__
from benchmark.accel import resolve_device
from benchmark.bootstrap import precompute
from benchmark.config import build_config, config_digest, config_to_dict
from benchmark.data.published import published_as
from benchmark.errors import SslBenchError, whole_sentences
from benchmark.protocol import WHOLE_NETWORK, FeatureSet, InputSpec, MetricSpec, Protocol, RunContext
from benchmark.registry import DATASETS, PROTOCOLS
from benchmark.results import SCHEMA_VERSION, PartialState, ResultStore, check_writable, safe_name
from benchmark.training.state import STATE_NAME, refuse_foreign_states
from benchmark.writable import check_writable_dir


@dataclasses.dataclass
class RunOptions:
    """Everything `ssl-bench run` accepts, with the CLI's defaults."""

    checkpoint: str
    protocol: str
    dataset: str | None = None
    data_root: Path | None = None
    taps: tuple[str, ...] | None = None
    results_dir: Path = Path("results")
    device: str = "auto"
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    resume: bool = False
    allow_partial: bool = False
    arch: str | None = None
    checkpoint_format: str | None = None
    checkpoint_key: str | None = None
    checkpoint_prefix: str | None = None
    name: str | None = None
    seed: int = 0
    batch_size: int = 64
    workers: int = 0
    limit: int | None = None
    cache_dir: Path | None = None


def default_cache_dir() -> Path:
    """$SSL_BENCH_CACHE/features, else ~/.cache/ssl-bench/features."""
    base = os.environ.get("SSL_BENCH_CACHE") or Path.home() / ".cache" / "ssl-bench"
    return Path(base) / "features"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(options: RunOptions, progress_factory: Callable[..., Any] | None = None,
        log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], Path]:
    """Evaluate one checkpoint with one protocol; returns the record and where it was written."""
    from benchmark.distributed import init_distributed, is_main_process
    from benchmark.features import FeatureExtractor
    from checkpoints.formats import load_checkpoint

    log = log or (lambda message: None)
    progress_factory = progress_factory or _quiet_progress
    started = time.perf_counter()

    protocol_cls: type[Protocol] = PROTOCOLS.get(options.protocol)
    config = build_config(protocol_cls.Config, options.overrides, owner=f"protocol '{options.protocol}'")
    store = ResultStore(options.results_dir)
    check_writable(options.results_dir)
    if options.cache_dir is not None:
        check_writable_dir(options.cache_dir, "feature cache", "pass --cache DIR or --no-cache")
    device = resolve_device(options.device)

    dataset_name = options.dataset or protocol_cls.default_dataset
    dataset = DATASETS.get(dataset_name)(root=options.data_root, limit=options.limit, seed=options.seed)
    lacking = [need for need in protocol_cls.needs if need not in dataset.provides]
    if lacking:
        raise SslBenchError(
            f"protocol '{options.protocol}' needs {', '.join(lacking)} from its dataset, which '{dataset_name}' "
            f"does not provide (it provides: {', '.join(sorted(dataset.provides)) or 'nothing'}); "
            "pick another --dataset")
    _check_distinct_splits(config, dataset, options.protocol)
    protocol = protocol_cls()
    metric_specs = declared_metrics(protocol, config, dataset)

    distributed = init_distributed()
    seed_everything(options.seed)

    checkpoint = load_checkpoint(options.checkpoint, arch=options.arch, allow_partial=options.allow_partial,
                                 fmt=options.checkpoint_format, seed=options.seed, key=options.checkpoint_key,
                                 prefix=options.checkpoint_prefix)
    checkpoint_name = options.name or checkpoint.name
    store.claim(checkpoint_name, checkpoint.sha256)
    check_writable_dir(store.folder(checkpoint_name), "results folder",
                       "make it writable, or pass --results DIR or --name NAME")
    backbone = checkpoint.backbone.to(device).eval()
    taps = backbone.check_taps(options.taps or _default_taps(protocol_cls, backbone))
    if not protocol_cls.per_tap:
        taps = ()

    mean, std = dataset.normalization or (checkpoint.meta.get("mean", backbone.mean),
                                          checkpoint.meta.get("std", backbone.std))
    input_spec = InputSpec(dataset.native_size or backbone.input_size, tuple(mean), tuple(std))
    checkpoint.meta.update(backbone.adapt_input(input_spec.size))
    transform = input_spec.eval_transform(dataset)
    transform_id = repr(transform)
    load_seconds = time.perf_counter() - started

    tick = time.perf_counter()
    dataset_info = dataset.describe()
    log(f"dataset {dataset_name}: " + ", ".join(f"{split} {n}" for split, n in dataset_info["splits"].items())
        + f" images, checked in {time.perf_counter() - tick:.1f}s")
    config_dict = config_to_dict(config)
    digest = config_digest({"protocol": options.protocol, "version": protocol_cls.version,
                            "config": config_dict, "dataset": dataset_info["digest"],
                            "dataset_name": dataset_name, "taps": list(taps), "seed": options.seed,
                            "checkpoint": checkpoint.sha256})
    state = PartialState(store.partial_state(checkpoint_name, options.protocol, digest).path,
                         resume=options.resume)
    artifacts = store.artifacts_dir(checkpoint_name, options.protocol, digest)
    identity = {"checkpoint": checkpoint.sha256, "protocol": options.protocol, "version": protocol_cls.version,
                "dataset": dataset_info["digest"], "taps": list(taps), "seed": options.seed,
                **{f"config.{key}": value for key, value in config_dict.items()}}
    if options.resume:
        refuse_foreign_states(artifacts.parent, safe_name(options.protocol), artifacts, identity)
    resumed_pieces = len(state)
    if resumed_pieces:
        log(f"resuming: {resumed_pieces} finished pieces found in {state.path}")

    extractor = FeatureExtractor(backbone, checkpoint.sha256, device,
                                 cache_dir=options.cache_dir, batch_size=options.batch_size,
                                 workers=options.workers, progress=progress_factory)
    extract_seconds = 0.0

    def extract(split: str, wanted: tuple[str, ...]) -> FeatureSet:
        nonlocal extract_seconds
        if split not in dataset.splits:
            raise SslBenchError(f"dataset '{dataset_name}' has no split '{split}'; "
                                f"its splits: {', '.join(dataset.splits)}")
        tick = time.perf_counter()
        features = extractor.extract(dataset, split, backbone.check_taps(wanted), transform, transform_id)
        extract_seconds += time.perf_counter() - tick
        log(f"features {split} [{', '.join(wanted)}]: {len(features)} images in {time.perf_counter() - tick:.1f}s")
        return features

    def extract_rows(split: str, wanted: tuple[str, ...], rows: np.ndarray) -> FeatureSet:
        nonlocal extract_seconds
        tick = time.perf_counter()
        features = extractor.extract_rows(dataset, split, backbone.check_taps(wanted), transform, transform_id, rows)
        extract_seconds += time.perf_counter() - tick
        log(f"features {split} [{', '.join(wanted)}]: {len(rows)} of its images in "
            f"{time.perf_counter() - tick:.1f}s")
        return features

    context = RunContext(backbone=backbone, taps=taps, dataset=dataset, device=device, seed=options.seed,
                         state=state, extract=extract, progress_factory=progress_factory, log=log,
                         input=input_spec, artifacts=artifacts, resume=options.resume, identity=identity,
                         batch_size=options.batch_size, workers=options.workers, cache_dir=options.cache_dir,
                         extract_rows=extract_rows)
    protocol_started = time.perf_counter()
    with _resumed_state_errors(state, resumed_pieces):
        result = protocol.run(context, config)
    protocol_seconds = time.perf_counter() - protocol_started
    log(f"{options.protocol}: done in {protocol_seconds:.1f}s")
    _check_metrics(result.metrics, taps if protocol_cls.per_tap else (WHOLE_NETWORK,), metric_specs,
                   options.protocol)

    record = {
        "schema_version": SCHEMA_VERSION,
        "checkpoint": {**checkpoint.describe(), "name": checkpoint_name, "spec": options.checkpoint},
        "protocol": {"name": options.protocol, "version": protocol_cls.version,
                     "primary_metric": next(spec.name for spec in metric_specs if spec.primary),
                     "metrics": [spec.to_json() for spec in metric_specs]},
        "config": config_dict,
        "config_digest": digest,
        "dataset": {**dataset_info, "name": dataset_name, "published": published_as(dataset, dataset_name)},
        "taps": list(taps),
        "preprocessing": {**input_spec.describe(), "transform": transform_id,
                          "pooling": {tap: extractor.pooling(tap).describe() for tap in taps}},
        "metrics": result.metrics,
        "details": result.details,
        "seed": options.seed,
        "versions": environment_versions(),
        "device": {"type": device.type, "name": _device_name(device), "distributed": distributed,
                   "torch_threads": torch.get_num_threads()},
        "timings": {"load_s": round(load_seconds, 3), "extract_s": round(extract_seconds, 3),
                    "protocol_s": round(protocol_seconds - extract_seconds, 3),
                    "total_s": round(time.perf_counter() - started, 3)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_pieces": resumed_pieces,
    }
    if not is_main_process():
        return record, Path()
    bootstrap = precompute(record)  # resampled statistics once here, so reports need no per-image pass
    if bootstrap is not None:
        record["bootstrap"] = bootstrap
    if artifacts.is_dir():
        record["artifacts"] = artifacts.name
    path = store.write(record)
    state.discard()
    (artifacts / STATE_NAME).unlink(missing_ok=True)
    return record, path


def _default_taps(protocol_cls: type[Protocol], backbone: Any) -> tuple[str, ...]:
    """The protocol's default taps: the arch's last tap for "last", the arch's defaults for None."""
    if protocol_cls.default_taps == "last":
        return (backbone.taps[-1].name,)
    return protocol_cls.default_taps or backbone.default_taps


def _check_distinct_splits(config: Any, dataset: Any, protocol: str) -> None:
    """A protocol that trains on one split and tests on another must not be given one split for both."""
    if not hasattr(config, "train_split") or not hasattr(config, "test_split"):
        return
    train, test = config.train_split or dataset.train_split, config.test_split or dataset.test_split
    if train == test:
        raise SslBenchError(f"protocol '{protocol}' would train and test on the same split '{train}' of dataset "
                            f"'{dataset.name}', which measures memory, not representation; pass --set "
                            f"train_split=NAME and --set test_split=NAME with two splits of: "
                            f"{', '.join(dataset.splits)}")


@contextlib.contextmanager
def _resumed_state_errors(state: PartialState, resumed_pieces: int) -> Iterator[None]:
    """A resumed piece the protocol cannot read (a state file of another shape) as one line naming the file."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        if not resumed_pieces:
            raise
        raise SslBenchError(f"partial state {state.path} does not fit this run ({type(error).__name__}: "
                            f"{whole_sentences(str(error), 120)}); delete it or run without --resume") from error


def declared_metrics(protocol: Protocol, config: Any, dataset: Any) -> tuple[MetricSpec, ...]:
    """The protocol's metric declarations, checked before it runs: unique names, exactly one primary."""
    specs = tuple(protocol.metrics(config, dataset))
    names = [spec.name for spec in specs]
    primaries = [spec.name for spec in specs if spec.primary]
    if not specs or len(set(names)) != len(names) or len(primaries) != 1:
        raise RuntimeError(f"protocol '{protocol.name}' must declare unique metrics with exactly one primary; "
                           f"got {names} with primary {primaries}")
    return specs


def _check_metrics(metrics: dict[str, dict[str, float]], keys: tuple[str, ...], specs: tuple[MetricSpec, ...],
                   protocol: str) -> None:
    missing = [key for key in keys if key not in metrics]
    extra = [key for key in metrics if key not in keys]
    if missing or extra:
        raise RuntimeError(f"protocol '{protocol}' returned metrics for {list(metrics)}, expected {list(keys)}")
    declared = {spec.name for spec in specs}
    for key, values in metrics.items():
        for metric, value in values.items():
            if metric not in declared:
                raise RuntimeError(f"protocol '{protocol}' returned the undeclared metric '{metric}'")
            if not isinstance(value, (int, float)) or not np.isfinite(value):
                raise RuntimeError(f"protocol '{protocol}' returned {metric}={value!r} for {key}")


def _quiet_progress(iterable: Any, **_: Any) -> Any:
    return iterable


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def environment_versions() -> dict[str, str | None]:
    """Versions of everything that can move a number, plus the git hash of this source tree."""
    import faiss
    import sklearn
    import torchvision

    return {"ssl_bench": __version__, "git": _git_hash(), "python": sys.version.split()[0],
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "sklearn": sklearn.__version__,
            "faiss": getattr(faiss, "__version__", None)}


def _git_hash() -> str | None:
    source = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
