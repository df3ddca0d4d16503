"""The atomic store of result records (their schema: benchmark.record) with array side files, and partial state."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.atomic import atomic_write_bytes, atomic_write_text  # re-exported: the store's writers
from benchmark.errors import SslBenchError
from benchmark.record import REQUIRED_KEYS, SCHEMA_VERSION, validate_record  # the first two re-exported
from benchmark.writable import check_writable_dir

ARRAY_KEY = "$array"  # marks a reference to an array in the record's side file
RUN_MEMBER = "_run"  # the side file's member holding the run id its record names
LOCK_NAME = ".lock"  # in each checkpoint folder: writers hold an flock on it, one at a time


def safe_name(name: str) -> str:
    """A checkpoint or protocol name usable as one path component."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._")
    return cleaned or "checkpoint"


def check_writable(results_dir: Path) -> None:
    """Fail before any compute when results cannot be written."""
    check_writable_dir(results_dir, "results dir", "pass --results DIR")


class ResultStore:
    """One JSON file per run at RESULTS/<checkpoint>/<protocol>.json, its arrays in a side file.

    A record with another config never overwrites an existing one: it goes to
    <protocol>-<config digest>.json instead. Re-running the same config replaces
    its own file. Every numpy array in a record (per-image scores, bootstrap
    statistics) goes to <stem>.<run id>.npz beside it and is replaced in the JSON
    by {"$array": name, "shape", "dtype"}; the record names the file and the run
    id under "arrays". Writers of one checkpoint folder take turns on an flock of
    its .lock file, held from the choice of the path to the cleanup, so parallel
    runs neither take each other's path nor remove each other's side files: the
    side file is written before the JSON, and afterwards only side files of that
    stem which no record in the folder names are removed. A folder belongs to the
    weights (sha256) of its first record: other weights under the same name are
    refused.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, checkpoint_name: str) -> Path:
        """RESULTS/<checkpoint>: where the records of one checkpoint name go."""
        return self.root / safe_name(checkpoint_name)

    def path_for(self, checkpoint_name: str, protocol: str, config_digest: str) -> Path:
        folder = self.folder(checkpoint_name)
        plain = folder / f"{safe_name(protocol)}.json"
        if not plain.exists() or _stored(plain, "config_digest") == config_digest:
            return plain
        return folder / f"{safe_name(protocol)}-{config_digest}.json"

    def claim(self, checkpoint_name: str, checkpoint_sha256: str) -> None:
        """Refuse, before any compute, weights other than those already recorded under this checkpoint name."""
        folder = self.folder(checkpoint_name)
        for path in sorted(folder.glob("*.json")):
            other = _stored(path, "checkpoint", "sha256")
            if isinstance(other, str) and other != checkpoint_sha256:
                raise SslBenchError(
                    f"results folder {folder} already holds results of other weights named '{checkpoint_name}' "
                    f"(sha256 {other[:12]} in {path.name}, this checkpoint's is {checkpoint_sha256[:12]}); "
                    "pass --name NAME to keep them apart")

    def write(self, record: dict[str, Any]) -> Path:
        problem = validate_record(record)
        if problem is None and record["schema_version"] != SCHEMA_VERSION:
            problem = f"has schema_version {record['schema_version']!r}; the store writes {SCHEMA_VERSION}"
        if problem is not None:
            raise ValueError(f"result record {problem}")
        checkpoint = record["checkpoint"]
        document, arrays = split_arrays(record)
        with folder_lock(self.folder(checkpoint["name"])):
            self.claim(checkpoint["name"], checkpoint["sha256"])
            path = self.path_for(checkpoint["name"], record["protocol"]["name"], record["config_digest"])
            if arrays:
                run = uuid.uuid4().hex[:12]
                buffer = io.BytesIO()
                np.savez(buffer, **{RUN_MEMBER: np.array(run)}, **arrays)
                side = atomic_write_bytes(path.with_name(f"{path.stem}.{run}.npz"), buffer.getvalue())
                document["arrays"] = {"file": side.name, "run": run}
            atomic_write_text(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
            _remove_unnamed_side_files(path)
        return path

    def artifacts_dir(self, checkpoint_name: str, protocol: str, config_digest: str) -> Path:
        """The run's own folder beside its record: training states, TensorBoard logs, written predictions."""
        return self.folder(checkpoint_name) / f"{safe_name(protocol)}-{config_digest}.artifacts"

    def partial_state(self, checkpoint_name: str, protocol: str, config_digest: str) -> PartialState:
        folder = self.folder(checkpoint_name) / ".partial"
        return PartialState(folder / f"{safe_name(protocol)}-{config_digest}.json")


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive flock on folder/.lock (created if needed) for the duration of the block."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _remove_unnamed_side_files(path: Path) -> None:
    """Delete the <stem>.<run id>.npz files of path's stem that no record in its folder names."""
    named = {_stored(other, "arrays", "file") for other in path.parent.glob("*.json")}
    pattern = re.compile(rf"{re.escape(path.stem)}\.[0-9a-f]{{12}}\.npz")
    for side in path.parent.glob("*.npz"):
        if side.name not in named and pattern.fullmatch(side.name):
            side.unlink(missing_ok=True)


def split_arrays(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON-ready copy of record, arrays by name): every numpy array replaced by a reference to its name."""
    arrays: dict[str, np.ndarray] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            name = f"a{len(arrays)}"
            arrays[name] = value
            return {ARRAY_KEY: name, "shape": list(value.shape), "dtype": value.dtype.str}
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(item) for item in value]
        return value

    return walk(record), arrays


class RecordArrays:
    """Resolves the array values of a stored record: lists as they are, references from its side file.

    The side file is checked against the record's run id on every read (it is
    opened per read, so no file handle outlives a call); a missing, foreign or
    corrupt side file raises SslBenchError naming both files.
    """

    def __init__(self, record_path: str | Path, record: dict[str, Any]) -> None:
        self.record_path = Path(record_path)
        self.info = record.get("arrays") if isinstance(record.get("arrays"), dict) else {}

    def __call__(self, value: Any) -> np.ndarray:
        if not (isinstance(value, dict) and ARRAY_KEY in value):
            return np.asarray(value)
        name = str(value[ARRAY_KEY])
        try:
            with np.load(self._side_file(), allow_pickle=False) as arrays:
                if RUN_MEMBER not in arrays.files or str(arrays[RUN_MEMBER]) != self.info.get("run"):
                    raise self._error("belongs to another run")
                if name not in arrays.files:
                    raise self._error(f"lacks the array '{name}'")
                return arrays[name]
        except FileNotFoundError:
            raise self._error("is missing") from None
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise self._error(f"cannot be read ({exc})") from None

    def _side_file(self) -> Path:
        name = self.info.get("file")
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".npz"):
            raise SslBenchError(f"{self.record_path} refers to stored arrays but names no .npz side file beside "
                                "it; rerun the protocol to rewrite the record")
        return self.record_path.with_name(name)

    def _error(self, problem: str) -> SslBenchError:
        return SslBenchError(f"side file {self.record_path.with_name(str(self.info.get('file')))} of "
                             f"{self.record_path} {problem}; rerun the protocol to rewrite both")


def _stored(path: Path, *keys: str) -> Any:
    """record[keys[0]][keys[1]]... of the JSON record at path; None when unreadable or absent."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


class PartialState:
    """Finished pieces of an interrupted run (JSON-ready values by string key), saved atomically on every put."""

    def __init__(self, path: Path, resume: bool = True) -> None:
        self.path = path
        self._data: dict[str, Any] = {}
        if resume and path.exists():
            try:
                self._data = json.loads(path.read_text())
            except ValueError:
                raise SslBenchError(
                    f"partial state {path} is corrupt; delete it or run without --resume") from None
            if not isinstance(self._data, dict):
                raise SslBenchError(f"partial state {path} holds a JSON {type(self._data).__name__}, not the "
                                    "object of finished pieces ssl-bench writes; delete it or run without --resume")

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def put(self, key: str, value: Any) -> None:
        self._data[key] = value
        atomic_write_text(self.path, json.dumps(self._data))

    def discard(self) -> None:
        """Remove the saved state once the final record is written, and its folder when that leaves it empty."""
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty (another run's state) or already gone
            self.path.parent.rmdir()

    def __len__(self) -> int:
        return len(self._data)
