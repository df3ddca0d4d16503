"""What a report wrote into its --out folder, so that the next report removes its own stale files and nothing else."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from benchmark.atomic import atomic_write_text

MANIFEST = ".ssl-bench-report.json"  # {"files": {relative path: sha256 of the bytes the report wrote}}


def replace_manifest(out: Path, written: Sequence[Path]) -> Path:
    """Record the files this report wrote; delete those of the previous report it did not write again.

    A file is deleted only when the previous manifest lists it and its bytes are
    still the ones the report wrote: files the user added or edited stay. Folders
    left empty by a deletion go too. Returns the manifest's path.
    """
    out = Path(out)
    current = {path.relative_to(out).as_posix(): _sha256(path) for path in written}
    for name, sha256 in _previous(out).items():
        path = out / name
        if name in current or Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
            continue
        if _sha256(path) == sha256:
            path.unlink()
            if path.parent != out:
                with contextlib.suppress(OSError):  # only when nothing else is in it
                    path.parent.rmdir()
    return atomic_write_text(out / MANIFEST, json.dumps({"files": current}, indent=1, sort_keys=True) + "\n")


def _previous(out: Path) -> dict[str, str]:
    try:
        files = json.loads((out / MANIFEST).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
