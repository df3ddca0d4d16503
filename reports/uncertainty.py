"""The evidence behind each table cell, read once: stored bootstrap statistics first, per-image arrays otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmark.bootstrap import N_BOOT, SEED, Bootstrap, Evidence, evidence_for, stored_statistics
from benchmark.errors import SslBenchError
from benchmark.results import RecordArrays
from reports.records import RecordSet


class Uncertainty:
    """Per-image evidence, bootstrap intervals and paired tests for the cells of tables, each computed once.

    A record made by the runner stores its bootstrap statistics (on the shared
    resamples of n_boot=1000, seed 0) and BCa acceleration; those are used as
    they are. Other settings (`--bootstrap N`) and older records (no
    statistics, or no acceleration) are resampled from their per-image arrays. A record whose side file is missing or foreign gets no
    interval and no mark, with one warning naming the file. Pass one instance
    to protocol_tables and summary_table to share the work.
    """

    def __init__(self, records: RecordSet, n_boot: int = N_BOOT, seed: int = SEED,
                 warn: Callable[[str], None] | None = None) -> None:
        self.records = records
        self.bootstrap = Bootstrap(n_boot, seed)
        self.warn = warn or (lambda message: None)
        self._evidence: dict[tuple[str, str, str], Evidence | None] = {}
        self._broken: set[str] = set()

    @property
    def n_boot(self) -> int:
        return self.bootstrap.n_boot

    @property
    def seed(self) -> int:
        return self.bootstrap.seed

    def evidence(self, path: Any, tap: str, metric: str) -> Evidence | None:
        """The evidence behind (record at path, tap, metric), or None (also for a missing path)."""
        if not isinstance(path, str) or path in self._broken:
            return None
        key = (path, tap, metric)
        if key not in self._evidence:
            self._evidence[key] = self._read(path, tap, metric)
        return self._evidence[key]

    def interval(self, path: Any, tap: str, metric: str) -> tuple[float, float] | None:
        found = self.evidence(path, tap, metric)
        return None if found is None else self.bootstrap.interval(found)

    def _read(self, path: str, tap: str, metric: str) -> Evidence | None:
        record = self.records.records[path]
        arrays = RecordArrays(path, record)
        try:
            stored = stored_statistics(record, tap, metric, self.n_boot, self.seed, arrays)
            if stored is not None and stored.acceleration is not None:
                return stored
            found = evidence_for(record, tap, metric, arrays)  # older records store no BCa acceleration
            return found if found is not None else stored
        except (SslBenchError, ValueError, KeyError, TypeError) as exc:
            self._broken.add(path)
            self.warn(f"no intervals or significance marks for {path}: {exc}")
            return None
