"""Checks, before any work, that an output folder or file can be written; one clear line when not."""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmark.errors import SslBenchError


def check_writable_dir(folder: Path, what: str, fix: str) -> None:
    """Create `folder` if needed and write a probe file in it; SslBenchError naming it and `fix` when that fails."""
    folder = Path(folder)
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        where = "is a file" if blocker == folder else f"lies under the file {blocker}"
        raise SslBenchError(f"{what} {folder} is not writable: it {where}; {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise SslBenchError(f"{what} {folder} is not writable ({error.strerror}); {fix}") from None


def check_output_file(path: Path, what: str, flag: str) -> None:
    """`path` can be written as a file: not a folder, and its folder exists or can be made, and is writable."""
    path = Path(path)
    if path.is_dir():
        raise SslBenchError(f"{what} {path} is a folder, not a file; pass {flag} FILE")
    check_writable_dir(path.parent, f"{what} {path}: its folder", f"pass {flag} FILE in a folder you can write")
