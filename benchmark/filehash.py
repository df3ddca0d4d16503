"""sha256 of files' bytes, each file read once: a small SQLite memo keyed by (absolute path, size, mtime, ctime).

The memo lives at $SSL_BENCH_CACHE/file-sha256.sqlite (else ~/.cache/ssl-bench/).
It only saves time: when it cannot be opened or written, files are hashed
without it. A file changed less than RACY_NS before it was hashed is not
remembered, since a second change within the same timestamp tick would leave
its (size, mtime, ctime) as they were (git's "racily clean" entries).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmark.errors import SslBenchError

MEMO_NAME = "file-sha256.sqlite"
RACY_NS = 2_000_000_000  # covers the coarsest common timestamps (FAT: 2 s; Linux: one jiffy)
LOOKUP_CHUNK = 500  # paths per memo query, below SQLite's oldest limit of 999 parameters


@dataclasses.dataclass(frozen=True)
class Stamp:
    """What identifies one version of a file without reading it."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int


def memo_path() -> Path:
    """$SSL_BENCH_CACHE/file-sha256.sqlite, else ~/.cache/ssl-bench/file-sha256.sqlite."""
    return Path(os.environ.get("SSL_BENCH_CACHE") or Path.home() / ".cache" / "ssl-bench") / MEMO_NAME


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256s(paths: Sequence[Path]) -> list[str]:
    """Hex sha256 of each listed file's bytes; only files the memo does not know as they are now are read."""
    stamps = [_stamp(Path(path)) for path in paths]
    with _memo() as memo:
        known = _recall(memo, stamps)
        started = time.time_ns()
        hashed = {stamp: _read_and_hash(stamp) for stamp in dict.fromkeys(stamps) if stamp not in known}
        _remember(memo, {stamp: sha for stamp, sha in hashed.items()
                         if max(stamp.mtime_ns, stamp.ctime_ns) < started - RACY_NS})
    return [known.get(stamp) or hashed[stamp] for stamp in stamps]


def _stamp(path: Path) -> Stamp:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise SslBenchError(f"listed file {path} does not exist; restore it or fix the split list") from None
    return Stamp(str(path.absolute()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _read_and_hash(stamp: Stamp) -> str:
    try:
        return sha256_file(Path(stamp.path))
    except OSError as error:
        raise SslBenchError(f"cannot read listed file {stamp.path} ({error.strerror}); "
                            "check its permissions or restore it") from None


@contextlib.contextmanager
def _memo() -> Iterator[sqlite3.Connection | None]:
    """The open memo database, or None when its place cannot hold one (read-only, not a folder, corrupt)."""
    memo = _connect()
    try:
        yield memo
    finally:
        if memo is not None:
            memo.close()


def _connect() -> sqlite3.Connection | None:
    memo = None
    try:
        memo_path().parent.mkdir(parents=True, exist_ok=True)
        memo = sqlite3.connect(memo_path(), timeout=30)
        with memo:
            memo.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
                         "mtime_ns INTEGER, ctime_ns INTEGER, sha256 TEXT)")
    except (OSError, sqlite3.Error):
        if memo is not None:
            memo.close()
        return None
    return memo


def _recall(memo: sqlite3.Connection | None, stamps: list[Stamp]) -> dict[Stamp, str]:
    known: dict[Stamp, str] = {}
    if memo is None:
        return known
    try:
        for start in range(0, len(stamps), LOOKUP_CHUNK):
            chunk = stamps[start:start + LOOKUP_CHUNK]
            rows = memo.execute("SELECT path, size, mtime_ns, ctime_ns, sha256 FROM files WHERE path IN "
                                f"({', '.join('?' * len(chunk))})", [stamp.path for stamp in chunk]).fetchall()
            remembered = {Stamp(*row[:4]): row[4] for row in rows}
            known.update((stamp, remembered[stamp]) for stamp in chunk if stamp in remembered)
    except sqlite3.Error:
        return {}
    return known


def _remember(memo: sqlite3.Connection | None, hashed: dict[Stamp, str]) -> None:
    if memo is None or not hashed:
        return
    try:
        with memo:
            memo.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                             [(s.path, s.size, s.mtime_ns, s.ctime_ns, sha) for s, sha in hashed.items()])
    except sqlite3.Error:
        pass  # a locked or read-only memo only costs the next run a re-read
