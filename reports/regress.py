"""The regression gate: result records against a committed baseline, with Markdown and JUnit summaries.

A baseline holds one entry per (checkpoint, protocol, tap, metric) with the
value and the settings that made it. A result matches an entry when its
settings are the same: the protocol config, protocol version, dataset name and
digest, and seed. The checkpoint's own digest is not a setting, since new
weights under the same name are what a gate compares. A multi-sample metric
(name ending in _mean, beside a _std) gets one entry carrying that std; its
_std, _min and _max companions are not gated on their own.

Without an absolute tolerance (neither in the baseline nor --tolerance) the
gate is noise-aware (reports.noise): a drop fails only when it is significant
at one-sided 95%, by a paired bootstrap where the baseline entry keeps the
bootstrap statistics of its per-image results (schema 2 baselines store them)
and the result keeps per-image results over the same images, else by a z-test
on the test-set size. With a tolerance, a value may drop by max(tolerance, k x
its baseline std) as in schema 1 baselines, which always carry one.

Which way is a drop comes from the record: each metric's higher_is_better as
its protocol declares it (guessed from the name for schema-1 records, see
benchmark.record.legacy_direction), kept in the baseline entry. A metric
declared with no direction (a spread, not a score) is never gated and never
enters a baseline. The key ``network`` (protocols that train the whole
network) is gated like any tap.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmark.bootstrap import Resampled
from benchmark.errors import SslBenchError
from benchmark.results import atomic_write_text
from reports.noise import (ALPHA, DEFAULT_TOLERANCE, LEVEL, can_pair, default_bootstrap, images_measured,
                           paired_verdict, record_statistics, scaled_allowance, statistics_from_json,
                           statistics_to_json)
from reports.records import RecordSet, as_direction, load_records

BASELINE_KIND = "ssl-bench-baseline"
BASELINE_SCHEMA = 2  # 2: tolerance may be null (noise-aware); entries add n_images and bootstrap
READABLE_SCHEMAS = (1, 2)
DEFAULT_K_STD = 2.0  # a multi-sample metric may drop by k x its baseline std when that exceeds the tolerance
FAILING = ("dropped", "missing", "config_changed")
COMPANIONS = ("_std", "_min", "_max")  # of a _mean metric
EPSILON = 1e-9  # a drop of exactly the allowance passes
MARKDOWN_ROWS = 30  # passing rows listed one by one up to this many; beyond, counts per checkpoint and protocol
ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "checkpoint": (str,), "protocol": (str,), "protocol_version": (str, type(None)), "variant": (str,),
    "config_digest": (str, type(None)), "config": (dict,), "dataset": (str, type(None)),
    "dataset_digest": (str, type(None)), "seed": (int, type(None)), "tap": (str,), "metric": (str,),
    "higher_is_better": (bool,), "value": (int, float), "std": (int, float, type(None)),
}
NOISE_TYPES: dict[str, tuple[type, ...]] = {"n_images": (int, type(None)), "bootstrap": (dict, type(None))}  # schema 2
SETTINGS = ("config", "protocol_version", "dataset", "dataset_digest", "seed")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One gated number with the settings that made it (a baseline entry, or a result to compare).

    Records of one checkpoint with the same settings are already reduced to the newest by load_records.
    """

    checkpoint: str
    protocol: str
    protocol_version: str | None
    variant: str
    config_digest: str | None
    config: dict[str, Any]
    dataset: str | None
    dataset_digest: str | None
    seed: int | None
    tap: str
    metric: str
    higher_is_better: bool
    value: float
    std: float | None
    n_images: int | None = None  # test images behind the value, when known
    stats: Resampled | None = dataclasses.field(default=None, compare=False, repr=False)  # bootstrap statistics
    path: str | None = dataclasses.field(default=None, compare=False)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.checkpoint, self.protocol, self.tap, self.metric

    @property
    def name(self) -> str:
        return "/".join(self.key)

    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SETTINGS}

    def to_json(self) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in ENTRY_TYPES}, "n_images": self.n_images,
                "bootstrap": None if self.stats is None else statistics_to_json(self.stats)}


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A parsed baseline file."""

    path: Path
    tolerance: float | None  # None: noise-aware
    created: str | None
    entries: tuple[Entry, ...]


@dataclasses.dataclass(frozen=True)
class Row:
    """The verdict on one baseline entry (or one result the baseline lacks: status 'new')."""

    status: str  # ok | improved | dropped | missing | config_changed | new
    checkpoint: str
    protocol: str
    tap: str
    metric: str
    baseline: float | None
    value: float | None
    allowance: float | None
    note: str
    path: str | None = None

    @property
    def name(self) -> str:
        return f"{self.checkpoint}/{self.protocol}/{self.tap}/{self.metric}"

    @property
    def delta(self) -> float | None:
        return None if self.baseline is None or self.value is None else self.value - self.baseline

    @property
    def message(self) -> str:
        """One line: status, numbers, why."""
        numbers = ""
        if self.baseline is not None and self.value is not None:
            numbers = f" {self.baseline:.2f} -> {self.value:.2f} ({self.delta:+.2f} points)"
        elif self.baseline is not None:
            numbers = f" baseline {self.baseline:.2f}"
        return f"{self.status}:{numbers}; {self.note}" if self.note else f"{self.status}:{numbers}"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Rows for every baseline entry, then the results the baseline lacks."""

    rows: tuple[Row, ...]
    tolerance: float | None  # None: noise-aware
    k_std: float

    @property
    def compared(self) -> list[Row]:
        return [row for row in self.rows if row.status != "new"]

    @property
    def failures(self) -> list[Row]:
        return [row for row in self.rows if row.status in FAILING]

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    def counts(self) -> Counter[str]:
        return Counter(row.status for row in self.rows)


# ------------------------------------------------------------------------------------------------- entries


def entries_of(records: RecordSet) -> list[Entry]:
    """Every gated (checkpoint, protocol, tap, metric) of the records, with its settings, std, test-image count
    and bootstrap statistics where known.

    Metrics without a direction (spreads) and the companions of a _mean are left out.
    """
    entries, bootstrap = [], default_bootstrap()
    for row in records.frame.itertuples(index=False):
        record = records.records[row.path]
        tap_metrics = record["metrics"][row.tap]
        metric = str(row.metric)
        higher = as_direction(row.higher_is_better)
        if higher is None:
            continue
        if any(metric.endswith(suffix) and metric[:-len(suffix)] + "_mean" in tap_metrics for suffix in COMPANIONS):
            continue
        std = tap_metrics.get(metric[:-len("_mean")] + "_std") if metric.endswith("_mean") else None
        protocol = record["protocol"]
        dataset = record.get("dataset") or {}
        stats = record_statistics(str(row.path), record, str(row.tap), metric, bootstrap)
        entries.append(Entry(
            checkpoint=str(row.checkpoint), protocol=str(row.protocol),
            protocol_version=_optional_str(protocol.get("version")), variant=str(row.variant),
            config_digest=record.get("config_digest"), config=dict(record.get("config") or {}),
            dataset=_optional_str(dataset.get("name")), dataset_digest=_optional_str(dataset.get("digest")),
            seed=record.get("seed"), tap=str(row.tap), metric=metric,
            higher_is_better=higher, value=float(row.value),
            std=None if std is None else float(std), n_images=images_measured(record, stats), stats=stats,
            path=str(row.path)))
    return entries


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


# ------------------------------------------------------------------------------------------------ baseline


def write_baseline(records: RecordSet, path: Path, tolerance: float | None = None) -> Path:
    """Write every gated number of `records` as a baseline file at `path` (atomically); tolerance None: noise-aware."""
    path = Path(path)
    entries = sorted(entries_of(records), key=lambda e: (*e.key, json.dumps(e.settings(), sort_keys=True)))
    document = {
        "kind": BASELINE_KIND,
        "schema_version": BASELINE_SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tolerance": None if tolerance is None else check_tolerance(tolerance),
        "entries": [entry.to_json() for entry in entries],
    }
    atomic_write_text(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def read_baseline(path: Path) -> Baseline:
    """Parse and check a baseline file; SslBenchError (one line) when it is not one this code reads."""
    path = Path(path)
    regenerate = f"regenerate it with `ssl-bench regress --baseline {path} --results DIR --write-baseline`"
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise SslBenchError(f"baseline {path} does not exist; create it with `ssl-bench regress --baseline "
                            f"{path} --results DIR --write-baseline`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SslBenchError(f"baseline {path} cannot be read ({exc}); pass a readable --baseline FILE") from None
    except ValueError as exc:
        raise SslBenchError(f"baseline {path} is not JSON ({exc}); {regenerate}") from None
    if not isinstance(document, dict) or document.get("kind") != BASELINE_KIND:
        raise SslBenchError(f"baseline {path} is not an ssl-bench baseline (no \"kind\": \"{BASELINE_KIND}\"); "
                            f"{regenerate}")
    version = document.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_SCHEMAS:
        raise SslBenchError(f"baseline {path} has schema_version {version}; this ssl-bench reads "
                            f"{', '.join(map(str, READABLE_SCHEMAS))}: regenerate it with `ssl-bench regress "
                            "--write-baseline`")
    tolerance = document.get("tolerance")
    if (tolerance is not None or version == 1) and (not _is_number(tolerance) or tolerance < 0):
        raise SslBenchError(f"baseline {path} has tolerance {tolerance!r}, expected a number >= 0"
                            f"{' or null (noise-aware)' if version > 1 else ''}; {regenerate}")
    raw_entries = document.get("entries")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise SslBenchError(f"baseline {path} has no entries; {regenerate}")
    types = ENTRY_TYPES if version == 1 else {**ENTRY_TYPES, **NOISE_TYPES}
    entries = tuple(_parse_entry(raw, i, path, regenerate, types) for i, raw in enumerate(raw_entries))
    created = document.get("created")
    return Baseline(path, None if tolerance is None else float(tolerance),
                    created if isinstance(created, str) else None, entries)


def _parse_entry(raw: Any, index: int, path: Path, regenerate: str, schema: dict[str, tuple[type, ...]]) -> Entry:
    if not isinstance(raw, dict):
        raise SslBenchError(f"baseline {path}: entry {index} is not an object; {regenerate}")
    for key, types in schema.items():
        value = raw.get(key)
        if key not in raw or not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise SslBenchError(f"baseline {path}: entry {index} has a missing or mistyped '{key}' "
                                f"({value!r}); {regenerate}")
    for key in ("value", "std"):
        if raw[key] is not None and not math.isfinite(raw[key]):
            raise SslBenchError(f"baseline {path}: entry {index} has {key} {raw[key]!r}; {regenerate}")
    fields = {key: raw[key] for key in ENTRY_TYPES}
    fields["value"] = float(fields["value"])
    fields["std"] = None if fields["std"] is None else float(fields["std"])
    stats = None
    if raw.get("bootstrap") is not None:
        try:
            stats = statistics_from_json(raw["bootstrap"], fields["value"], fields["dataset_digest"])
        except ValueError as exc:
            raise SslBenchError(f"baseline {path}: entry {index} has a broken 'bootstrap' ({exc}); "
                                f"{regenerate}") from None
    return Entry(**fields, n_images=raw.get("n_images"), stats=stats, path=str(path))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_tolerance(tolerance: Any) -> float:
    """The tolerance in metric points as a float >= 0, or SslBenchError."""
    if not _is_number(tolerance) or tolerance < 0:
        raise SslBenchError(f"--tolerance must be a number of points >= 0, got {tolerance!r}")
    return float(tolerance)


# ------------------------------------------------------------------------------------------------- compare


def compare(baseline: Baseline, records: RecordSet, tolerance: float | None = None,
            k_std: float = DEFAULT_K_STD) -> Comparison:
    """Judge every baseline entry against the results; results the baseline lacks come last as 'new'.

    tolerance None: the baseline's, which None makes noise-aware.
    """
    tolerance = baseline.tolerance if tolerance is None else check_tolerance(tolerance)
    by_key: dict[tuple[str, str, str, str], list[Entry]] = defaultdict(list)
    for entry in entries_of(records):
        by_key[entry.key].append(entry)
    exact: dict[int, Entry] = {}  # baseline entry index -> the result with the same key and settings
    for i, base in enumerate(baseline.entries):
        same = [c for c in by_key.get(base.key, []) if c.settings() == base.settings()]
        if same:
            exact[i] = same[0]
    used = {id(entry) for entry in exact.values()}
    rows = []
    for i, base in enumerate(baseline.entries):
        others = [c for c in by_key.get(base.key, []) if id(c) not in used]
        if i in exact:
            rows.append(judge(base, exact[i], tolerance, k_std))
        elif others:
            closest = min(others, key=lambda c: len(setting_changes(base, c)))
            used.add(id(closest))
            rows.append(_row(base, "config_changed", closest.value, None,
                             f"settings differ: {'; '.join(setting_changes(base, closest))}", closest.path))
        else:
            rows.append(_row(base, "missing", None, None, "no result for it in the results", None))
    for entries in by_key.values():
        rows.extend(Row("new", e.checkpoint, e.protocol, e.tap, e.metric, None, e.value, None, "not in the baseline",
                        e.path) for e in entries if id(e) not in used)
    return Comparison(tuple(rows), tolerance, k_std)


def judge(base: Entry, result: Entry, tolerance: float | None, k_std: float = DEFAULT_K_STD) -> Row:
    """ok, improved or dropped: a change beyond max(allowance, k_std x std) counts, std being the baseline's.

    The allowance is the tolerance; without one (None), a paired bootstrap decides where both sides keep
    per-image statistics over the same images, else the z-test allowance on the test-set size.
    """
    direction = "" if base.higher_is_better else "; lower is better"
    if tolerance is None and can_pair(base.stats, result.stats):
        verdict = paired_verdict(base.stats, result.stats, base.higher_is_better)
        return _row(base, verdict.status, result.value, None, verdict.note + direction, result.path)
    if tolerance is None:
        allowance, why = _noise_allowance(base, result)
    else:
        allowance, why = tolerance, f"tolerance {tolerance:g}"
    if base.std is not None and k_std * base.std > allowance:
        allowance, why = k_std * base.std, f"{k_std:g} x std {base.std:.2f}"
    gain = result.value - base.value if base.higher_is_better else base.value - result.value
    if gain < -allowance - EPSILON:
        status = "dropped"
    elif gain > allowance + EPSILON:
        status = "improved"
    else:
        status = "ok"
    return _row(base, status, result.value, allowance, f"allowed {allowance:.2f} ({why}){direction}", result.path)


def _noise_allowance(base: Entry, result: Entry) -> tuple[float, str]:
    """The z-test allowance on the test-set size for a percentage, else the default tolerance, and why."""
    n_images = base.n_images or result.n_images
    allowance = scaled_allowance(base.value, result.value, n_images) if base.higher_is_better else None
    if allowance is None:
        return DEFAULT_TOLERANCE, f"tolerance {DEFAULT_TOLERANCE:g}: no per-image results and no test-set size"
    return allowance, f"z-test on {n_images} test images, {LEVEL}"


def _row(entry: Entry, status: str, value: float | None, allowance: float | None, note: str,
         path: str | None) -> Row:
    return Row(status, entry.checkpoint, entry.protocol, entry.tap, entry.metric, entry.value, value, allowance,
               note, path)


def setting_changes(base: Entry, result: Entry) -> list[str]:
    """'key: old -> new' for every setting (config keys by their own name) that differs."""
    changes = []
    old_config, new_config = base.config, result.config
    for key in sorted(set(old_config) | set(new_config)):
        old, new = old_config.get(key, "(unset)"), new_config.get(key, "(unset)")
        if old != new:
            changes.append(f"{key}: {_short(old)} -> {_short(new)}")
    for key in SETTINGS[1:]:
        old, new = getattr(base, key), getattr(result, key)
        if old != new:
            changes.append(f"{key}: {_short(old)} -> {_short(new)}")
    return changes


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:12] + "..."


# ----------------------------------------------------------------------------------------------- summaries


def summary_line(comparison: Comparison) -> str:
    """'ssl-bench regress: PASSED|FAILED: N compared, N failed (...), ...'."""
    counts = comparison.counts()
    failed = len(comparison.failures)
    detail = ", ".join(f"{counts[s]} {s}" for s in FAILING if counts[s])
    others = ", ".join(f"{counts[s]} {s}" for s in ("ok", "improved", "new") if counts[s])
    std_rule = f"{comparison.k_std:g} x std for multi-sample metrics"
    rule = (f"tolerance {comparison.tolerance:g} points" if comparison.tolerance is not None else
            f"noise-aware: a drop fails when significant at {LEVEL} (p <= {ALPHA:g}), by a paired bootstrap of "
            "per-image results, else a z-test on the test-set size")
    return (f"ssl-bench regress: {'FAILED' if comparison.failed else 'PASSED'}: {len(comparison.compared)} "
            f"compared, {failed} failed{f' ({detail})' if detail else ''}{f'; {others}' if others else ''} "
            f"({rule}, {std_rule})")


def to_markdown(comparison: Comparison) -> str:
    """The summary line, a table of the failures, then the other rows (counts only when there are many)."""
    lines = [summary_line(comparison), ""]
    failures = comparison.failures
    rest = [row for row in comparison.rows if row.status not in FAILING]
    if failures:
        lines += ["### Failures", "", *_table(failures), ""]
    if any(row.status == "improved" for row in rest):
        lines += ["Improvements pass; record them with `ssl-bench regress --write-baseline`.", ""]
    if rest and len(rest) <= MARKDOWN_ROWS:
        lines += ["### Passing and new", "", *_table(rest), ""]
    elif rest:
        lines += ["### Passing and new (counts)", "", *_count_table(rest), ""]
    return "\n".join(lines).rstrip() + "\n"


def _table(rows: Sequence[Row]) -> list[str]:
    out = ["| status | checkpoint | protocol | tap | metric | baseline | result | delta | note |",
           "|---|---|---|---|---|---:|---:|---:|---|"]
    for row in rows:
        cells = [row.status, row.checkpoint, row.protocol, row.tap, row.metric, _number(row.baseline),
                 _number(row.value), "" if row.delta is None else f"{row.delta:+.2f}", row.note]
        out.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return out


def _count_table(rows: Sequence[Row]) -> list[str]:
    statuses = [s for s in ("ok", "improved", "new") if any(row.status == s for row in rows)]
    counts = Counter((row.checkpoint, row.protocol, row.status) for row in rows)
    pairs = sorted({(row.checkpoint, row.protocol) for row in rows})
    out = ["| checkpoint | protocol | " + " | ".join(statuses) + " |", "|---|---|" + "---:|" * len(statuses)]
    for checkpoint, protocol in pairs:
        cells = [checkpoint, protocol, *(str(counts[(checkpoint, protocol, s)]) for s in statuses)]
        out.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return out


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|")


_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    return _XML_ILLEGAL.sub("?", text)


def to_junit(comparison: Comparison) -> str:
    """JUnit XML: one testcase per baseline entry, a <failure> for each failing one; new results in system-out."""
    compared, failures = comparison.compared, comparison.failures
    counts = {"tests": str(len(compared)), "failures": str(len(failures)), "errors": "0", "skipped": "0"}
    root = ET.Element("testsuites", name="ssl-bench", **counts)
    suite = ET.SubElement(root, "testsuite", name="ssl-bench regress", **counts)
    for row in compared:
        case = ET.SubElement(suite, "testcase", name=_xml_text(row.name), classname="ssl-bench regress")
        if row.status in FAILING:
            failure = ET.SubElement(case, "failure", message=_xml_text(row.message), type=row.status)
            failure.text = _xml_text(f"{row.message}\nresult record: {row.path or '(none)'}")
    new = [row for row in comparison.rows if row.status == "new"]
    out = [summary_line(comparison), *(f"new: {row.name} = {row.value:.2f} ({row.path})" for row in new)]
    ET.SubElement(suite, "system-out").text = _xml_text("\n".join(out))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ------------------------------------------------------------------------------------------------- command


def run_regress(baseline_path: Path, results_dirs: Sequence[Path], tolerance: float | None = None,
                junit_path: Path | None = None, write_baseline: bool = False, strict: bool = False,
                warn: Callable[[str], None] | None = None, emit: Callable[[str], None] | None = None) -> int:
    """`ssl-bench regress`: 0 pass, 1 regression; the Markdown summary goes to `emit` (default: stdout).

    With write_baseline, the results become the baseline (tolerance: the given one, else noise-aware) and 0 is
    returned. Bad input raises SslBenchError (the CLI exits 2).
    """
    emit = emit or _stdout
    if tolerance is not None:
        tolerance = check_tolerance(tolerance)
    records = load_records([Path(d) for d in results_dirs], strict=strict, warn=warn)
    if write_baseline:
        _rebase(records, Path(baseline_path), tolerance, emit)
        return 0
    comparison = compare(read_baseline(Path(baseline_path)), records, tolerance)
    emit(to_markdown(comparison))
    if junit_path is not None:
        atomic_write_text(Path(junit_path), to_junit(comparison))
    return 1 if comparison.failed else 0


def _rebase(records: RecordSet, path: Path, tolerance: float | None, emit: Callable[[str], None]) -> None:
    """The --write-baseline branch (a function of its own: run_regress's flag shadows write_baseline)."""
    write_baseline(records, path, tolerance)
    entries = read_baseline(path).entries
    rule = (f"tolerance {tolerance:g} points" if tolerance is not None else
            f"noise-aware at {LEVEL}, {sum(e.stats is not None for e in entries)} with bootstrap statistics")
    emit(f"ssl-bench regress: wrote baseline {path} ({len(entries)} entries, {rule})")


def _stdout(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
