"""Progress for the CLI: tqdm bars on a terminal; elsewhere (CI, nohup, SLURM) a log line every minute of a long loop.

The runner logs one line per stage (dataset, features of each split, the
protocol) with counts and times in either case. Under torchrun only rank 0
reports (RANK is read from the environment, so this imports no torch).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

HEARTBEAT_S = 60.0  # a stage still running logs where it is this often


def is_main_rank() -> bool:
    """Rank 0 of a torchrun job, or a single process."""
    return os.environ.get("RANK", "0") == "0"


def progress_factory(log: Callable[[str], None], terminal: bool | None = None) -> Callable[..., Any]:
    """progress(iterable, desc, total): a tqdm bar on a terminal, else a StageLog; silent on ranks other than 0."""
    terminal = sys.stderr.isatty() if terminal is None else terminal

    def progress(iterable: Iterable[Any], desc: str = "", total: int | None = None, **kwargs: Any) -> Any:
        if terminal or not is_main_rank():
            from tqdm.auto import tqdm

            return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                        disable=None if is_main_rank() else True, **kwargs)
        return StageLog(iterable, desc, total, log)

    return progress


class StageLog:
    """Iterates like a tqdm bar without drawing one: a log line every HEARTBEAT_S saying how far it is.

    `disable` is True, as for a tqdm bar that shows nothing, so callers that log
    their own lines when no bar is visible (the training loop) keep doing so.
    """

    disable = True

    def __init__(self, iterable: Iterable[Any], desc: str, total: int | None, log: Callable[[str], None],
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.iterable, self.desc, self.log, self.heartbeat_s = iterable, desc, log, heartbeat_s
        self.total = total if total is not None else _length(iterable)
        self.postfix: dict[str, Any] = {}

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def __len__(self) -> int:
        return self.total or 0

    def __iter__(self) -> Iterator[Any]:
        started = last = time.perf_counter()
        for done, item in enumerate(self.iterable, start=1):
            yield item
            now = time.perf_counter()
            if now - last >= self.heartbeat_s:
                self.log(f"{self.desc}: {done}/{self.total or '?'} after {now - started:.0f}s{self._extra()}")
                last = now

    def _extra(self) -> str:
        return "".join(f", {key} {value}" for key, value in self.postfix.items())


def _length(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
