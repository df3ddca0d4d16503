"""Result records on disk -> one tidy pandas frame (one row per record, tap and metric).

Every table, plot and the regression gate start from `load_records`. Records
of one protocol that were made with different settings (protocol version,
config, dataset, dataset digest) get different *variant* labels, so they
land in separate columns and are never averaged together:

- one setting among all records of a protocol: the variant is the protocol
  name (``voc07_svm``);
- several: the protocol name plus the fields that differ, e.g.
  ``voc07_svm[costs=fair]`` or ``knn[ks=10,20; temperature=0.1]``; when that
  label would be long or ambiguous, a short digest of the settings
  (``knn[3f2a9c01]``).

Taps are not part of the variant: two records of one checkpoint and variant
with different taps fill different columns of one row (a protocol that trains
the whole network reports under the key ``network`` instead of a tap). When
two records give the same (checkpoint, variant, tap, metric), the newer (by
``created``) wins and a warning names both files.

Whether a higher value is better comes from the record's declaration
(protocol.metrics: true, false, or null for a spread that is no score);
records of schema 1 declare nothing, so their names decide
(benchmark.record.legacy_direction).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.config import config_digest
from benchmark.errors import SslBenchError
from benchmark.record import legacy_direction, metric_directions, validate_record

COLUMNS = ("checkpoint", "protocol", "variant", "config_digest", "dataset", "dataset_digest",
           "tap", "metric", "value", "primary", "higher_is_better", "path")
ARTIFACTS_SUFFIX = ".artifacts"  # a run's own folder beside its record (logs, predictions): never records
MAX_LABEL = 48  # longer variant labels fall back to a digest of the settings


@dataclasses.dataclass
class RecordSet:
    """Parsed records and their tidy frame.

    frame: one row per (record, tap, metric) with the columns in COLUMNS;
      higher_is_better (object dtype) is True, False or None (a spread: never ranked).
    records: path -> parsed record (only the records that passed validation).
    variants: variant label -> the settings that define it (protocol, version,
      config, dataset, dataset_digest, primary_metric), plus `published`: the record's
      verdict on whether its data is the published dataset (None in older records). The run
      seed is not a setting: it only seeds random:ARCH weights, which the checkpoint's own
      identity covers.
    skipped: path -> why that file was skipped.
    directions: (variant, metric) -> higher_is_better as the newest record of the variant declares it.
    """

    frame: pd.DataFrame
    records: dict[str, dict[str, Any]]
    variants: dict[str, dict[str, Any]]
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    directions: dict[tuple[str, str], bool | None] = dataclasses.field(default_factory=dict)

    @property
    def checkpoints(self) -> list[str]:
        """Checkpoint names in sorted order."""
        return sorted(self.frame["checkpoint"].unique())

    def paths(self, checkpoint: str, variant: str) -> list[str]:
        """Files holding the numbers of one checkpoint under one variant, newest last."""
        rows = self.frame[(self.frame["checkpoint"] == checkpoint) & (self.frame["variant"] == variant)]
        return sorted(rows["path"].unique(), key=lambda p: _created(self.records[p], p))

    def direction(self, variant: str, metric: str) -> bool | None:
        """higher_is_better of metric in variant, as its newest record declares it (None: not a score)."""
        key = (variant, metric)
        return self.directions[key] if key in self.directions else legacy_direction(metric)


def as_direction(value: Any) -> bool | None:
    """A frame cell of higher_is_better as True, False or None (numpy booleans and NaN included)."""
    return None if value is None or value != value else bool(value)


def load_records(dirs: str | Path | Iterable[str | Path], strict: bool = False,
                 warn: Callable[[str], None] | None = None) -> RecordSet:
    """Read every result record (*.json) under dirs, leaving out hidden folders (.partial) and *.artifacts folders.

    A malformed record or one of another schema version is skipped with a
    warning naming the file, or raises SslBenchError when strict.
    """
    warn = warn or (lambda message: None)
    roots = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    if not roots:
        raise SslBenchError("no results directory given; pass --results DIR")
    records: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for root in roots:
        if not root.is_dir():
            raise SslBenchError(f"results directory {root} does not exist; pass --results DIR")
        for path in _record_files(root):
            key = str(path)
            if key in records or key in skipped:
                continue
            record, problem = _read(path)
            if problem is None:
                records[key] = record
                continue
            if strict:
                raise SslBenchError(f"{path}: {problem}; fix or remove the file, or run without --strict")
            skipped[key] = problem
            warn(f"skipping {path}: {problem}")
    if not records:
        where = ", ".join(str(r) for r in roots)
        raise SslBenchError(f"no result records under {where}; run `ssl-bench run` first")
    labels, variants = record_variant_labels(records)
    frame, directions = _frame(records, labels, warn)
    return RecordSet(frame, records, variants, skipped, directions)


def _record_files(root: Path) -> list[Path]:
    """The *.json files under root, not descending into hidden or *.artifacts folders, in sorted order."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not _skipped(name)]
        found += [Path(folder, name) for name in files if name.endswith(".json") and not name.startswith(".")]
    return sorted(found)


def _skipped(folder: str) -> bool:
    return folder.startswith(".") or folder.endswith(ARTIFACTS_SUFFIX)


def _read(path: Path) -> tuple[dict[str, Any], None] | tuple[None, str]:
    """(record, None) when the file is a valid record of a readable schema, else (None, why not)."""
    try:
        record = json.loads(path.read_text())
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror})"
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"is not valid JSON ({exc})"
    problem = validate_record(record)
    return (record, None) if problem is None else (None, problem)


def variant_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The settings that make two records of one protocol comparable (taps and checkpoint aside)."""
    return {"protocol": record["protocol"]["name"], "version": record["protocol"].get("version"),
            "config": record["config"], "dataset": record["dataset"]["name"],
            "dataset_digest": record["dataset"]["digest"]}


def record_variant_labels(records: dict[str, dict[str, Any]]
                          ) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(path -> variant label, variant label -> settings incl. primary_metric) for validated records."""
    by_protocol: dict[str, dict[str, dict[str, Any]]] = {}
    key_of: dict[str, str] = {}
    primary: dict[str, str] = {}
    published: dict[str, dict[str, Any] | None] = {}
    for path, record in records.items():
        settings = variant_settings(record)
        key = config_digest(settings)
        key_of[path] = key
        by_protocol.setdefault(settings["protocol"], {})[key] = settings
        primary[key] = record["protocol"]["primary_metric"]
        published[key] = record["dataset"].get("published")
    label_of: dict[str, str] = {}
    variants: dict[str, dict[str, Any]] = {}
    for protocol in sorted(by_protocol):
        keyed = by_protocol[protocol]
        labels = _labels(protocol, keyed)
        for key in sorted(keyed, key=labels.__getitem__):
            label_of[key] = labels[key]
            variants[labels[key]] = {**keyed[key], "primary_metric": primary[key], "published": published[key]}
    return {path: label_of[key] for path, key in key_of.items()}, variants


def _labels(protocol: str, keyed: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Variant labels of the distinct settings of one protocol."""
    if len(keyed) == 1:
        return {key: protocol for key in keyed}
    flat = {key: _flatten(settings) for key, settings in keyed.items()}
    fields = sorted({f for values in flat.values() for f in values})
    differing = [f for f in fields if len({json.dumps(v.get(f), sort_keys=True) for v in flat.values()}) > 1]
    labels = {key: f"{protocol}[{'; '.join(f'{f}={_show(flat[key].get(f))}' for f in differing)}]"
              for key in keyed}
    if len(set(labels.values())) < len(labels) or any(len(label) > MAX_LABEL for label in labels.values()):
        return {key: f"{protocol}[{key[:8]}]" for key in keyed}
    return labels


def _flatten(settings: dict[str, Any]) -> dict[str, Any]:
    """Config fields by their own name, then dataset, data digest and protocol version."""
    return {**settings["config"], "dataset": settings["dataset"], "data": settings["dataset_digest"][:8],
            "version": settings["version"]}


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _created(record: dict[str, Any], path: str) -> tuple[str, str]:
    return str(record.get("created") or ""), path


def _frame(records: dict[str, dict[str, Any]], labels: dict[str, str], warn: Callable[[str], None]
           ) -> tuple[pd.DataFrame, dict[tuple[str, str], bool | None]]:
    """(the tidy frame, (variant, metric) -> direction); in several records the newest wins for both."""
    rows: dict[tuple[str, str, str, str], tuple[Any, ...]] = {}
    directions: dict[tuple[str, str], bool | None] = {}
    replaced: dict[tuple[str, str], tuple[str, str]] = {}
    for path in sorted(records, key=lambda p: _created(records[p], p)):
        record = records[path]
        checkpoint, protocol = record["checkpoint"]["name"], record["protocol"]["name"]
        primary = record["protocol"]["primary_metric"]
        declared = metric_directions(record)
        variant = labels[path]
        directions.update({(variant, metric): higher for metric, higher in declared.items()})
        for tap, values in record["metrics"].items():
            for metric, value in values.items():
                key = (checkpoint, variant, tap, metric)
                if key in rows:
                    replaced[(rows[key][-1], path)] = (checkpoint, variant)
                rows[key] = (checkpoint, protocol, variant, record["config_digest"], record["dataset"]["name"],
                             record["dataset"]["digest"], tap, metric, float(value), metric == primary,
                             declared[metric], path)
    for (older, newer), (checkpoint, variant) in replaced.items():
        warn(f"{older} and {newer} both hold numbers of '{checkpoint}' ({variant}) for the same taps; "
             f"using the newer {newer} there")
    frame = pd.DataFrame(list(rows.values()), columns=list(COLUMNS))
    frame["higher_is_better"] = frame["higher_is_better"].astype(object)  # True, False or None, never NaN
    frame = frame.sort_values(["variant", "checkpoint", "tap", "metric"], kind="stable").reset_index(drop=True)
    return frame, directions
