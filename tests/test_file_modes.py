"""Files ssl-bench writes get the umask's permissions, as open() gives them, not mkstemp's 0600."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from benchmark.atomic import replacing
from checkpoints import zoo
from checkpoints.formats import save_native
from checkpoints.models import build_seeded
from test_cli import knn_args, run_cli


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cache_records_and_side_files_follow_the_umask(capsys, tmp_path, folder_root, umask):
    cache, results = tmp_path / "cache", tmp_path / "results"
    code, _, err = run_cli(capsys, *knn_args("random:resnet18_cifar", folder_root, results, "--taps", "res5avg",
                                             "--cache", str(cache)))
    assert code == 0, err
    written = [p for p in [*cache.rglob("*"), *results.rglob("*")] if p.is_file() and p.name != ".lock"]
    assert any(p.suffix == ".npy" for p in written) and any(p.suffix == ".npz" for p in written)
    assert {p.name: mode(p) for p in written} == {p.name: 0o666 & ~umask for p in written}


def test_native_checkpoints_and_zoo_downloads_follow_the_umask(tmp_path, monkeypatch, umask):
    for name in ("ckpt.pth", "ckpt.safetensors"):
        path = save_native(tmp_path / name, build_seeded("resnet18_cifar", 0).state_dict(), "resnet18_cifar", {})
        assert mode(path) == 0o666 & ~umask
    data = (tmp_path / "ckpt.pth").read_bytes()
    entry = zoo.CheckpointCfg("tiny", (tmp_path / "ckpt.pth").as_uri(), "resnet18_cifar", "native", "test", "none",
                              "none (arXiv:0000.00000)", "MIT", sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(zoo.ZOO, "tiny", entry)
    fetched = zoo.fetch("tiny", cache_dir=tmp_path / "zoo", progress=False)
    assert fetched.read_bytes() == data and mode(fetched) == 0o666 & ~umask


def test_replacing_leaves_nothing_behind_on_error(tmp_path):
    target = tmp_path / "kept.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["kept.bin"]
