"""Places205 as FAIR and mmselfsup lay it out: lists `<split>_places205.csv` with lines `<relative path> <label>`.

Lists are looked for in root/trainvalsplit_places205/ then root/; images under
root/data/vision/torralba/deeplearning/images256/, root/images256/ or root/.
Class names come from categoryIndex_places205.csv (`/a/abbey 0`) when present,
else they are the index strings '0'..'204'.
"""

from __future__ import annotations

from pathlib import Path


from benchmark.data.images import ListedImages, check_split, require_root
from benchmark.errors import SslBenchError
from benchmark.registry import DATASETS

N_CLASSES = 205
LIST_DIRS = ("trainvalsplit_places205", ".")
IMAGE_DIRS = ("data/vision/torralba/deeplearning/images256", "images256", ".")
CATEGORY_FILE = "categoryIndex_places205.csv"

_HINT = ("pass --data-root pointing at the Places205 folder holding trainvalsplit_places205/ "
         "(or write a small one with `ssl-bench make-data places205 --out DIR`)")


def read_places_list(path: Path) -> list[tuple[str, int]]:
    """(relative image path, label) pairs of one list file."""
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise SslBenchError(f"{path}:{number}: expected '<relative image path> <label>', got {line.strip()!r}")
        pairs.append((fields[0].lstrip("/"), int(fields[1])))
    return pairs


def category_name(path: str) -> str:
    """'/a/apartment_building/outdoor' -> 'apartment_building/outdoor'."""
    parts = path.strip("/").split("/")
    return "/".join(parts[1:] if len(parts) > 1 and len(parts[0]) == 1 else parts)


@DATASETS.register("places205")
class Places205(ListedImages):
    """Places205 scene classification: train (about 2.45M images) and val (20500), 205 classes."""

    name = "places205"
    splits = ("train", "val")
    train_split = "train"
    test_split = "val"

    def __init__(self, root: Path | None, limit: int | None = None, seed: int = 0) -> None:
        super().__init__(root, limit, seed)
        self.base = require_root(self.name, root, _HINT)
        self.list_dir = self._find_list_dir()
        self._classes = self._read_classes()
        self._pairs: dict[str, list[tuple[str, int]]] = {}
        self._found_image_dir: Path | None = None

    def _find_list_dir(self) -> Path:
        tried = [self.base / d / f"{s}_places205.csv" for d in LIST_DIRS for s in self.splits]
        for d in LIST_DIRS:
            if all((self.base / d / f"{s}_places205.csv").is_file() for s in self.splits):
                return (self.base / d).resolve()
        missing = [str(p) for p in tried if not p.is_file()]
        raise SslBenchError(f"Places205 lists not found: missing {', '.join(missing)}; {_HINT}")

    def _read_classes(self) -> list[str]:
        for folder in (self.list_dir, self.base):
            path = folder / CATEGORY_FILE
            if path.is_file():
                entries = read_places_list(path)
                names = [""] * len(entries)
                for name, index in entries:
                    if index >= len(entries) or names[index]:
                        raise SslBenchError(f"{path}: category indices must be 0..{len(entries) - 1}, each once")
                    names[index] = category_name(name)
                return names
        return [str(c) for c in range(N_CLASSES)]

    def _split_pairs(self, split: str) -> list[tuple[str, int]]:
        check_split(self.name, split, self.splits)
        if split not in self._pairs:
            path = self.list_dir / f"{split}_places205.csv"
            pairs = sorted(read_places_list(path))
            bad = [label for _, label in pairs if label >= len(self._classes)]
            if bad:
                raise SslBenchError(f"{path}: label {bad[0]} is out of range for {len(self._classes)} classes")
            self._pairs[split] = self._limited(pairs)
        return self._pairs[split]

    @property
    def image_dir(self) -> Path:
        """The folder the listed paths are relative to: the first candidate holding the first listed image."""
        if self._found_image_dir is None:
            probe = next((path for s in self.splits for path, _ in self._split_pairs(s)), None)
            candidates = [self.base / d for d in IMAGE_DIRS]
            found = [d for d in candidates if probe is None or (d / probe).is_file()]
            if not found:
                raise SslBenchError(f"Places205 image {probe} not found under any of "
                                    f"{', '.join(str(d) for d in candidates)}; {_HINT}")
            self._found_image_dir = found[0].resolve()
        return self._found_image_dir

    def _image_dir(self, split: str) -> Path:
        return self.image_dir

    def _files_root(self) -> Path:
        return self.image_dir
