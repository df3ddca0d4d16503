"""Test doubles shared by the protocol tests: a RunContext over in-memory features, a reference AP."""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.protocol import FeatureSet, RunContext
from benchmark.results import PartialState


def fake_context(tmp_path: Path, taps, splits: dict[str, tuple[Any, np.ndarray]], *, dataset: Any = None,
                 state: PartialState | None = None, calls: list | None = None,
                 progress: Callable[..., Any] | None = None, id_format: str = "{split}{i}") -> RunContext:
    """A RunContext whose extract serves `splits[split] = (X or {tap: X}, labels)` (extract_rows: some of its
    rows) and records calls (split, taps) or (split, taps, rows)."""
    def extract(split: str, wanted: tuple[str, ...]) -> FeatureSet:
        if calls is not None:
            calls.append((split, wanted))
        X, labels = splits[split]
        return FeatureSet({t: X[t] if isinstance(X, dict) else X for t in wanted}, labels,
                          [id_format.format(split=split, i=i) for i in range(len(labels))])

    def extract_rows(split: str, wanted: tuple[str, ...], rows: np.ndarray) -> FeatureSet:
        if calls is not None:
            calls.append((split, wanted, rows.tolist()))
        X, labels = splits[split]
        return FeatureSet({t: (X[t] if isinstance(X, dict) else X)[rows] for t in wanted}, np.asarray(labels)[rows],
                          [id_format.format(split=split, i=i) for i in rows])

    return RunContext(backbone=None, taps=tuple(taps),
                      dataset=dataset or types.SimpleNamespace(train_split="train", test_split="test"),
                      device=torch.device("cpu"), seed=0,
                      state=state if state is not None else PartialState(tmp_path / "state.json"),
                      extract=extract, progress_factory=progress or (lambda iterable, **kwargs: iterable),
                      log=lambda message: None, extract_rows=extract_rows)


def reference_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """All-point AP as the VOC devkit computes it: per image, sorted by score, monotone envelope."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(labels[order] == 1)
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / tp[-1]
    mrec, mpre = np.r_[0.0, recall, 1.0], np.r_[0.0, precision, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))
