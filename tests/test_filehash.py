"""Dataset digests (and so feature cache keys) follow file contents; the sha256 memo spares re-reading unchanged files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import benchmark.filehash as filehash
from benchmark.data.folder import ImageFolder
from benchmark.data.nyuv2 import NyuV2
from benchmark.data.places205 import Places205
from benchmark.data.synthetic import write_folder, write_nyuv2, write_places205, write_voc
from benchmark.data.voc import Voc2007


def write_bmp(path: Path, seed: int) -> None:
    """An 8x8 RGB BMP of random pixels: every such file has the same byte size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="BMP")


@pytest.fixture
def bmp_root(tmp_path: Path) -> Path:
    """root/{train,val}/class_{0,1}/{0,1}.bmp, dated a minute back like data that has sat on disk."""
    root = tmp_path / "bmp"
    for n, split in enumerate(("train", "val")):
        for c in range(2):
            for k in range(2):
                write_bmp(root / split / f"class_{c}" / f"{k}.bmp", seed=4 * n + 2 * c + k)
    past = time.time() - 60
    for path in root.rglob("*.bmp"):
        os.utime(path, (past, past))
    return root


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose bytes are hashed, in order."""
    seen: list[str] = []
    original = filehash.sha256_file

    def counting(path: Path) -> str:
        seen.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(filehash, "sha256_file", counting)
    return seen


def test_same_name_same_size_rewrite_changes_the_digest_and_unchanged_files_are_not_reread(
        bmp_root: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filehash, "RACY_NS", 0)  # the files' ctime is now; let the memo keep them anyway
    first = ImageFolder(bmp_root).digest()
    assert len(reads) == 8 and filehash.memo_path().is_file()
    assert filehash.memo_path().parent == Path(os.environ["SSL_BENCH_CACHE"])
    assert ImageFolder(bmp_root).digest() == first
    assert len(reads) == 8, "unchanged files were hashed again instead of coming from the memo"

    victim = bmp_root / "train" / "class_1" / "0.bmp"
    size = victim.stat().st_size
    write_bmp(victim, seed=99)
    assert victim.stat().st_size == size
    rewritten = ImageFolder(bmp_root).digest()
    assert rewritten != first
    assert reads[8:] == ["0.bmp"], "only the rewritten file is read again"
    assert ImageFolder(bmp_root).digest() == rewritten


def test_files_changed_just_before_hashing_are_not_remembered(bmp_root: Path, reads: list[str]) -> None:
    """Their (size, mtime, ctime) could stay the same through another write within one timestamp tick."""
    assert ImageFolder(bmp_root).digest() == ImageFolder(bmp_root).digest()
    assert len(reads) == 16


HASHER = """
import sys
from pathlib import Path
import benchmark.filehash as filehash
filehash.RACY_NS = 0
for _ in range(5):
    filehash.file_sha256s(sorted(Path(sys.argv[1]).rglob("*.bmp")))
"""


def test_parallel_processes_share_the_memo(bmp_root: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs of a sweep digest the same data at once: none fails, and what they hashed is remembered."""
    hashers = [subprocess.Popen([sys.executable, "-c", HASHER, str(bmp_root)], stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    for hasher in hashers:
        _, err = hasher.communicate(timeout=120)
        assert hasher.returncode == 0, err
    monkeypatch.setattr(filehash, "RACY_NS", 0)
    ImageFolder(bmp_root).digest()
    assert reads == []


@pytest.mark.parametrize("spoil", ["a file, not a folder", "garbage memo"])
def test_unusable_memo_location_still_digests_by_content(bmp_root: Path, reads: list[str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, spoil: str) -> None:
    expected = ImageFolder(bmp_root).digest()
    place = tmp_path / "spoilt"
    if spoil == "a file, not a folder":
        place.write_text("not a folder")
    else:
        place.mkdir()
        (place / filehash.MEMO_NAME).write_bytes(b"not a database" * 100)
    monkeypatch.setenv("SSL_BENCH_CACHE", str(place))
    monkeypatch.setattr(filehash, "RACY_NS", 0)
    assert ImageFolder(bmp_root).digest() == expected
    assert ImageFolder(bmp_root).digest() == expected
    assert len(reads) == 24


@pytest.mark.parametrize("kind", ["folder", "places205", "voc2007", "nyuv2"])
def test_every_file_dataset_digests_image_bytes(tmp_path: Path, kind: str) -> None:
    """One byte of one image changed in place (same name, same size): a new digest for every file format."""
    root = tmp_path / kind
    if kind == "folder":
        write_folder(root, seed=0, n_classes=2, per_class=2, size=16)
        dataset, image = ImageFolder, sorted(root.rglob("*.jpg"))[0]
    elif kind == "places205":
        write_places205(root, seed=0, n_classes=2, train_per_class=2, val_per_class=1, size=16)
        dataset, image = Places205, sorted(root.rglob("*.jpg"))[0]
    elif kind == "voc2007":
        write_voc(root, seed=0, n_trainval=4, n_test=4, size=32)
        dataset, image = Voc2007, sorted(root.rglob("JPEGImages/*.jpg"))[0]
    else:
        write_nyuv2(root, seed=0, n_train=2, n_test=2, size=16)
        dataset, image = NyuV2, sorted(root.rglob("normals/*.png"))[0]
    before = dataset(root).digest()
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image.write_bytes(bytes(data))
    assert dataset(root).digest() != before
