"""The result record: its schema version, required keys, and the one check that the store and the reports share.

A record is one JSON object per run, written by ResultStore. Schema 2
adds protocol.metrics, the protocol's declaration of every metric it reports:

    "protocol": {"name": "knn", "version": "1", "primary_metric": "top1_k20",
                 "metrics": [{"name": "top1_k20", "higher_is_better": true, "primary": true}, ...]}

higher_is_better is true, false (an error: lower is better) or null (a spread
such as lowshot's mAP_k4_std: not a score, never ranked). Records of schema 1
carry no declaration; their directions are guessed from the metric names
(`legacy_direction`). Metrics sit under a tap name, or under WHOLE_NETWORK for
protocols that train the whole network.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # schema 1: the previous release, without protocol.metrics
REQUIRED_KEYS = ("schema_version", "checkpoint", "protocol", "config", "dataset", "metrics",
                 "seed", "versions", "device", "timings")
WHOLE_NETWORK = "network"  # the metrics key of a protocol that trains the whole network (no tap)
LOWER_IS_BETTER_WORDS = ("error", "loss")


def validate_record(record: Any) -> str | None:
    """None when record is a result record of a readable schema, else what is wrong (one phrase)."""
    if not isinstance(record, dict):
        return "is not a result record (expected a JSON object)"
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if "schema_version" in missing:
        return f"lacks keys {missing}; it is not an ssl-bench result record"
    version = record["schema_version"]
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        return (f"has schema_version {version!r} but this ssl-bench reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}")
    if missing:
        return f"lacks keys {missing}"
    nested = {"checkpoint": ("name",), "protocol": ("name", "primary_metric"), "dataset": ("name", "digest")}
    for key, fields in nested.items():
        block = record[key]
        if not isinstance(block, dict):
            return f"lacks the '{key}' object"
        for field in fields:
            if not isinstance(block.get(field), str) or not block[field]:
                return f"lacks the string '{key}.{field}'"
    if not isinstance(record["config"], dict):
        return "lacks the 'config' object"
    if not isinstance(record.get("config_digest"), str):
        return "lacks the string 'config_digest'"
    metrics = record["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        return "lacks 'metrics' ({tap: {metric: number}})"
    for tap, values in metrics.items():
        if not isinstance(values, dict) or not values:
            return f"has no metrics for tap '{tap}'"
        for metric, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return f"has a non-numeric value {value!r} for metric '{metric}' of tap '{tap}'"
    if "details" in record and not isinstance(record["details"], (dict, type(None))):
        return "has 'details' that is not an object"
    if "metrics" in record["protocol"]:
        return _declaration_problem(record["protocol"], metrics)
    return None


def _declaration_problem(protocol: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> str | None:
    """What is wrong with protocol.metrics against the reported metrics, or None."""
    declared = protocol["metrics"]
    if not isinstance(declared, list) or not declared:
        return "has 'protocol.metrics' that is not a list of metric declarations"
    names: list[str] = []
    primaries: list[str] = []
    for i, spec in enumerate(declared):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            return f"has protocol.metrics[{i}] without a string 'name'"
        if "higher_is_better" not in spec or not isinstance(spec["higher_is_better"], (bool, type(None))):
            return f"has protocol.metrics[{i}] ('{spec['name']}') without higher_is_better true, false or null"
        if not isinstance(spec.get("primary"), bool):
            return f"has protocol.metrics[{i}] ('{spec['name']}') without a boolean 'primary'"
        names.append(spec["name"])
        if spec["primary"]:
            primaries.append(spec["name"])
            if spec["higher_is_better"] is None:
                return f"declares the primary metric '{spec['name']}' with no direction (higher_is_better null)"
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        return f"declares the metrics {repeated} more than once in protocol.metrics"
    if primaries != [protocol["primary_metric"]]:
        return (f"declares the primary metrics {primaries} in protocol.metrics, expected exactly "
                f"['{protocol['primary_metric']}'] (protocol.primary_metric)")
    for tap, values in metrics.items():
        undeclared = [metric for metric in values if metric not in names]
        if undeclared:
            return f"reports metrics {undeclared} of tap '{tap}' that protocol.metrics does not declare"
    return None


def metric_directions(record: dict[str, Any]) -> dict[str, bool | None]:
    """metric -> higher_is_better of every metric a validated record reports: declared, else guessed by name."""
    declared = record["protocol"].get("metrics")
    if isinstance(declared, list):
        return {spec["name"]: spec["higher_is_better"] for spec in declared}
    return {metric: legacy_direction(metric) for values in record["metrics"].values() for metric in values}


def legacy_direction(metric: str) -> bool | None:
    """The direction of a metric of an undeclared (schema 1) record, guessed from its name.

    None for spreads (names ending in _std), False for errors and losses
    (surface normals' median_error), True for everything else (accuracies, APs).
    """
    if metric.endswith("_std"):
        return None
    return not any(word in metric.lower() for word in LOWER_IS_BETTER_WORDS)
