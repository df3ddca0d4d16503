"""Result records, their JSON schema, the atomic store, and partial state for resume."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from benchmark.errors import SslBenchError

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema_version", "checkpoint", "protocol", "config", "dataset", "metrics",
                 "seed", "versions", "device", "timings")


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """atomic_write_bytes for UTF-8 text."""
    return atomic_write_bytes(path, text.encode())


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def safe_name(name: str) -> str:
    """A checkpoint or protocol name usable as one path component."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._")
    return cleaned or "checkpoint"


def check_writable(results_dir: Path) -> None:
    """Fail before any compute when results cannot be written."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=results_dir, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise SslBenchError(
            f"results dir {results_dir} is not writable ({exc.strerror}); pass --results DIR") from None


class ResultStore:
    """One JSON file per run at RESULTS/<checkpoint>/<protocol>.json.

    A record with another config never overwrites an existing one: it goes to
    <protocol>-<config digest>.json instead. Re-running the same config replaces
    its own file.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, checkpoint_name: str, protocol: str, config_digest: str) -> Path:
        folder = self.root / safe_name(checkpoint_name)
        plain = folder / f"{safe_name(protocol)}.json"
        if not plain.exists() or _config_digest_of(plain) == config_digest:
            return plain
        return folder / f"{safe_name(protocol)}-{config_digest}.json"

    def write(self, record: dict[str, Any]) -> Path:
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise ValueError(f"result record lacks keys {missing}")
        path = self.path_for(record["checkpoint"]["name"], record["protocol"]["name"],
                             record["config_digest"])
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return path

    def partial_state(self, checkpoint_name: str, protocol: str, config_digest: str) -> PartialState:
        folder = self.root / safe_name(checkpoint_name) / ".partial"
        return PartialState(folder / f"{safe_name(protocol)}-{config_digest}.json")


def _config_digest_of(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("config_digest")
    except (OSError, ValueError):
        return None


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

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def put(self, key: str, value: Any) -> None:
        self._data[key] = value
        atomic_write_text(self.path, json.dumps(self._data))

    def discard(self) -> None:
        """Remove the saved state once the final record is written."""
        self.path.unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._data)
