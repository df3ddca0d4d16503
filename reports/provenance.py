"""What a reader must know beside a number: runs on a subset (--limit) or with random trunk keys (--allow-partial).

Tables name these conditions in their captions, per checkpoint row, so a
number measured on 40 images or on a partly random trunk never passes for a
full-benchmark result.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def run_conditions(record: dict[str, Any]) -> list[str]:
    """The conditions of one record that change what its numbers mean (empty for a plain full run)."""
    conditions = []
    dataset = record.get("dataset") or {}
    if dataset.get("limit") is not None:
        rule = f", {dataset['limit_rule']}, seed {dataset['limit_seed']}" if "limit_rule" in dataset else ""
        conditions.append(f"--limit {dataset['limit']} images per split{rule}")
    checkpoint = record.get("checkpoint") or {}
    missing = checkpoint.get("missing_keys") or 0
    if missing:
        total = missing + (checkpoint.get("matched_keys") or 0)
        conditions.append(f"{missing} of {total} trunk keys left at random init (--allow-partial)")
    return conditions


def conditions_text(rows: Iterable[tuple[str, dict[str, Any]]]) -> str:
    """One caption sentence naming each (checkpoint, record) with conditions, or '' when there are none."""
    named: dict[str, list[str]] = {}
    for checkpoint, record in rows:
        for condition in run_conditions(record):
            if condition not in named.setdefault(checkpoint, []):
                named[checkpoint].append(condition)
    parts = [f"{checkpoint}: {', '.join(conditions)}" for checkpoint, conditions in sorted(named.items()) if conditions]
    return f"Not full-benchmark runs: {'; '.join(parts)}." if parts else ""
