"""The one record definition: schema versions, required keys, metric declarations, legacy directions."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from benchmark import results
from benchmark.record import (READABLE_VERSIONS, REQUIRED_KEYS, SCHEMA_VERSION, legacy_direction, metric_directions,
                              validate_record)


def finetune_record() -> dict[str, Any]:
    """A schema-2 record of a protocol that trains the whole network."""
    return {
        "schema_version": 2, "checkpoint": {"name": "ckpt", "sha256": "c" * 64},
        "protocol": {"name": "finetune", "version": "1", "primary_metric": "top1",
                     "metrics": [{"name": "top1", "higher_is_better": True, "primary": True},
                                 {"name": "top5", "higher_is_better": True, "primary": False},
                                 {"name": "top1_std", "higher_is_better": None, "primary": False}]},
        "config": {"epochs": 1}, "config_digest": "0123abcd", "dataset": {"name": "folder", "digest": "d" * 64},
        "taps": [], "metrics": {"network": {"top1": 70.0, "top5": 90.0}}, "details": {},
        "seed": 0, "versions": {}, "device": {"type": "cpu"}, "timings": {"total_s": 1.0},
    }


def test_the_store_and_the_reports_share_one_definition():
    assert (results.SCHEMA_VERSION, results.REQUIRED_KEYS) == (SCHEMA_VERSION, REQUIRED_KEYS)
    assert SCHEMA_VERSION == 2 and READABLE_VERSIONS == (1, 2)
    assert validate_record(finetune_record()) is None


def test_schema_1_records_without_declarations_still_validate():
    record = finetune_record()
    record["schema_version"] = 1
    del record["protocol"]["metrics"]
    assert validate_record(record) is None
    assert metric_directions(record) == {"top1": True, "top5": True}


def edit(path: str, value: Any) -> dict[str, Any]:
    """The finetune record with the value at a dotted path (list positions as numbers) replaced."""
    record = copy.deepcopy(finetune_record())
    *parents, last = path.split(".")
    target: Any = record
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    target[int(last) if isinstance(target, list) else last] = value
    return record


@pytest.mark.parametrize("record, problem", [
    ([], "expected a JSON object"),
    ({"checkpoint": {}}, "lacks keys ['schema_version', 'protocol'"),
    (edit("schema_version", 3), "has schema_version 3 but this ssl-bench reads versions 1, 2"),
    (edit("schema_version", True), "has schema_version True"),
    (edit("protocol.primary_metric", ""), "lacks the string 'protocol.primary_metric'"),
    (edit("metrics.network.top1", float("nan")), "non-numeric value nan for metric 'top1' of tap 'network'"),
    (edit("protocol.metrics", {}), "'protocol.metrics' that is not a list"),
    (edit("protocol.metrics.1", {"name": "top5", "primary": False}), "('top5') without higher_is_better"),
    (edit("protocol.metrics.1.higher_is_better", 1), "('top5') without higher_is_better true, false or null"),
    (edit("protocol.metrics.1.primary", None), "('top5') without a boolean 'primary'"),
    (edit("protocol.metrics.1.name", 5), "protocol.metrics[1] without a string 'name'"),
    (edit("protocol.metrics.1.primary", True), "declares the primary metrics ['top1', 'top5']"),
    (edit("protocol.metrics.1.name", "top1"), "declares the metrics ['top1'] more than once"),
    (edit("protocol.primary_metric", "top5"), "expected exactly ['top5'] (protocol.primary_metric)"),
    (edit("metrics.network.top10", 99.0), "reports metrics ['top10'] of tap 'network' that protocol.metrics"),
])
def test_every_problem_is_one_phrase(record, problem):
    found = validate_record(record)
    assert found is not None and problem in found and "\n" not in found


@pytest.mark.parametrize("metric, direction", [
    ("top1", True), ("mAP_k4_mean", True), ("mAP_k4_std", None), ("median_error", False), ("val_Loss", False),
    ("within_11.25", True),
])
def test_legacy_direction_is_the_schema_1_guess(metric, direction):
    assert legacy_direction(metric) is direction
