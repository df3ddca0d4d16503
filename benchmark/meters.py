"""Training-loop meters: a windowed/global average per metric and a logger that reports every n steps."""

from __future__ import annotations

import collections
import datetime
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch

from benchmark import distributed

T = TypeVar("T")


class SmoothedValue:
    """Median and mean over the last `window` updates, plus a global average that can be synced across ranks."""

    def __init__(self, window: int = 20) -> None:
        self.recent: collections.deque[float] = collections.deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.recent.append(float(value))
        self.total += float(value) * n
        self.count += n

    def synchronize(self) -> None:
        """Replace count and total by their sums over ranks (the window stays local)."""
        count, self.total = distributed.all_reduce_sum([self.count, self.total])
        self.count = int(count)

    @property
    def median(self) -> float:
        return statistics.median(self.recent) if self.recent else float("nan")

    @property
    def avg(self) -> float:
        return statistics.fmean(self.recent) if self.recent else float("nan")

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def value(self) -> float:
        return self.recent[-1] if self.recent else float("nan")

    def __str__(self) -> str:
        return f"{self.median:.4f} ({self.global_avg:.4f})"


class MetricLogger:
    """Named SmoothedValues, reported through `log` every `every` steps of `log_every`."""

    def __init__(self, log: Callable[[str], None], window: int = 20) -> None:
        self.log = log
        self.window = window
        self.meters: dict[str, SmoothedValue] = {}

    def update(self, n: int = 1, **values: float | torch.Tensor) -> None:
        for name, value in values.items():
            number = value.item() if isinstance(value, torch.Tensor) else float(value)
            self.meters.setdefault(name, SmoothedValue(self.window)).update(number, n)

    def __getitem__(self, name: str) -> SmoothedValue:
        return self.meters[name]

    def synchronize(self) -> None:
        for meter in self.meters.values():
            meter.synchronize()

    def __str__(self) -> str:
        return "  ".join(f"{name}: {meter}" for name, meter in self.meters.items())

    def log_every(self, iterable: Iterable[T], every: int, header: str = "") -> Iterator[T]:
        """Yield from `iterable`; every `every` steps and at the end, log step, ETA, meters, step and data time."""
        total = len(iterable) if hasattr(iterable, "__len__") else None
        step_time, data_time = SmoothedValue(self.window), SmoothedValue(self.window)
        started = end = time.perf_counter()
        step = 0
        for step, item in enumerate(iterable, 1):
            data_time.update(time.perf_counter() - end)
            yield item
            step_time.update(time.perf_counter() - end)
            end = time.perf_counter()
            if step % every == 0 or step == total:
                self.log(self._line(header, step, total, step_time, data_time))
        elapsed = datetime.timedelta(seconds=round(time.perf_counter() - started))
        self.log(f"{header} done: {step} steps in {elapsed} ({step_time.global_avg:.4f} s/step)".strip())

    def _line(self, header: str, step: int, total: int | None, step_time: SmoothedValue,
              data_time: SmoothedValue) -> str:
        where = f"[{step}/{total}]" if total else f"[{step}]"
        eta = f"eta: {datetime.timedelta(seconds=round(step_time.global_avg * (total - step)))}  " if total else ""
        memory = ""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            memory = f"  max mem: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB"
        return (f"{header} {where}  {eta}{self}  time: {step_time}  data: {data_time}{memory}").strip()
