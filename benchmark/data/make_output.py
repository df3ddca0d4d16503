"""`make-data --out DIR`: never merge into a folder of other files; replace an earlier output of the same kind."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from benchmark.atomic import atomic_write_text
from benchmark.errors import SslBenchError

MARKER = ".ssl-bench-make-data.json"  # {"kind": KIND, "files": [relative paths make-data wrote]}


@contextlib.contextmanager
def make_data_output(out: Path, kind: str, overwrite: bool = False) -> Iterator[None]:
    """Check and prepare `out` for make-data KIND, run the block, then mark `out` as that kind's output.

    An empty or missing folder is used as it is. A folder holding an earlier
    make-data output of the same kind loses that output's files first (files
    the user added stay), so a smaller or other-seeded dataset does not mix
    with the earlier one. Any other non-empty folder is refused unless
    `overwrite`, which writes into it as it is.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise SslBenchError(f"--out {out} is a file; pass a folder to write the {kind} data into")
    before = _files(out)
    earlier = _marker(out)
    if earlier.get("kind") == kind:
        for name in earlier.get("files", []):
            if isinstance(name, str) and ".." not in Path(name).parts and not Path(name).is_absolute():
                (out / name).unlink(missing_ok=True)
        for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):  # only folders the removal left empty
                folder.rmdir()
        before = _files(out)
    elif before and not overwrite:
        what = f"make-data {earlier['kind']} output" if earlier.get("kind") else f"{len(before)} files"
        raise SslBenchError(f"--out {out} is not empty (it holds {what}); pass an empty or new folder, "
                            f"or --overwrite to write the {kind} data into it anyway")
    yield
    written = sorted(name for name in _files(out) - before if name != MARKER)
    atomic_write_text(out / MARKER, json.dumps({"kind": kind, "files": written}, indent=1) + "\n")


def _files(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {MARKER}


def _marker(folder: Path) -> dict:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}
