"""Any labelled image folder: root/train/<class>/<image> and root/val/<class>/<image>, classes sorted."""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from benchmark.data.images import ListedImages, check_split, require_dir, require_root
from benchmark.errors import SslBenchError
from benchmark.registry import DATASETS

_HINT = ("pass --data-root pointing at a folder holding train/<class>/ and val/<class>/ image folders "
         "(or write a small one with `ssl-bench make-data folder --out DIR`)")


@DATASETS.register("folder")
class ImageFolder(ListedImages):
    """Class-per-folder images; the classes are train/'s sub-folders, sorted; val/ may lack some."""

    name = "folder"
    splits = ("train", "val")
    train_split = "train"
    test_split = "val"

    def __init__(self, root: Path | None, limit: int | None = None, seed: int = 0) -> None:
        super().__init__(root, limit, seed)
        self.base = require_root(self.name, root, _HINT)
        for split in self.splits:
            require_dir(self.base / split, f"'{split}' split", _HINT)
        try:
            self._classes, self._class_to_idx = find_classes(self.base / "train")
        except FileNotFoundError:
            raise SslBenchError(f"no class folders in {self.base / 'train'}; {_HINT}") from None
        self._samples: dict[str, list[tuple[str, int]]] = {}

    def _split_pairs(self, split: str) -> list[tuple[str, int]]:
        """(path relative to root/split, label) pairs, by class then file name."""
        check_split(self.name, split, self.splits)
        if split not in self._samples:
            folder = self.base / split
            extra = sorted(set(p.name for p in folder.iterdir() if p.is_dir()) - set(self._classes))
            if extra:
                raise SslBenchError(f"class folder {folder / extra[0]} has no counterpart in "
                                    f"{self.base / 'train'}; every class must have training images")
            try:
                samples = make_dataset(folder, self._class_to_idx, extensions=IMG_EXTENSIONS,
                                       allow_empty=split != "train")
            except FileNotFoundError as error:
                raise SslBenchError(f"{folder}: {str(error).splitlines()[0]}") from None
            pairs = [(Path(path).relative_to(folder).as_posix(), label) for path, label in samples]
            self._samples[split] = self._limited(pairs)
        return self._samples[split]

    def _image_dir(self, split: str) -> Path:
        return self.base / split

    def _files_root(self) -> Path:
        return self.base
