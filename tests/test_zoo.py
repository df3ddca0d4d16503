"""The checkpoint zoo: entry schema, and fetch over file:// URLs (no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import urllib.request
from pathlib import Path

import pytest
import torch

from benchmark.errors import SslBenchError
from benchmark.registry import ARCHS
from checkpoints import zoo
from checkpoints.formats import FORMATS, load_checkpoint, save_native
from checkpoints.models import build_seeded


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_entry_schema(name):
    entry = zoo.get(name)
    assert entry.name == name and entry.url.startswith("https://")
    assert entry.arch in ARCHS and entry.format in FORMATS
    assert entry.method and entry.recipe and entry.license and re.search(r"\(arXiv:\d{4}\.\d{4,5}\)", entry.paper)
    assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    for prefix in (entry.sha256_prefix, entry.md5_prefix):
        assert prefix is None or re.fullmatch(r"[0-9a-f]{8}", prefix)
    embedded = re.search(r"-([0-9a-f]{8})\.pth$", entry.url)  # torchvision / OpenMMLab: sha256[:8] in the name
    assert entry.sha256_prefix == (embedded[1] if embedded else None)
    assert len(entry.mean) == 3 and len(entry.std) == 3 and all(s > 0 for s in entry.std)
    assert all(0 < value <= 100 for value in entry.expected.values())
    assert not entry.expected or entry.sources
    assert entry.meta()["verification"] == entry.verification


def test_zoo_covers_the_promised_releases():
    methods = {entry.method for entry in zoo.list_zoo()}
    assert {"supervised", "moco_v2", "simclr", "byol", "dino", "swav", "barlow_twins"} <= methods
    assert zoo.get("supervised_rn50").expected["voc07_svm/res5/map"] == 87.17
    assert zoo.get("moco_v2_800ep").expected["voc07_svm/res5/map"] == 84.26
    assert [e.name for e in zoo.list_zoo()] == sorted(zoo.ZOO)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(SslBenchError, match="unknown zoo checkpoint 'moco_v2_80ep'.*Did you mean 'moco_v2_800ep'"):
        zoo.get("moco_v2_80ep")
    with pytest.raises(SslBenchError, match="zoo checkpoint 'moco_v3'"):
        load_checkpoint("zoo:moco_v3")


@pytest.fixture
def release(tmp_path, monkeypatch) -> tuple[str, Path, bytes]:
    """A native resnet18_cifar checkpoint published at a file:// URL as zoo entry 'tiny'."""
    source = save_native(tmp_path / "published" / "tiny-release.pt", build_seeded("resnet18_cifar", 7).state_dict(),
                         "resnet18_cifar", {})
    data = source.read_bytes()
    entry = zoo.CheckpointCfg("tiny", source.as_uri(), "resnet18_cifar", "native", "test", "none",
                              "none (arXiv:0000.00000)", "MIT", sha256=hashlib.sha256(data).hexdigest(),
                              mean=(0.5, 0.5, 0.5))
    monkeypatch.setitem(zoo.ZOO, "tiny", entry)
    return "tiny", source, data


def test_fetch_downloads_into_the_cache_once(release, monkeypatch):
    name, _, data = release
    path = zoo.fetch(name, progress=False)
    assert path.parent == Path(os.environ["SSL_BENCH_CACHE"]) / "zoo"
    assert path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    def offline(*args, **kwargs):
        raise AssertionError("a verified cached file was downloaded again")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert zoo.fetch(name, progress=False) == path


def test_fetch_reports_progress_and_honours_cache_dir(release, tmp_path):
    name, _, data = release
    seen: list[tuple[int, int]] = []
    path = zoo.fetch(name, cache_dir=tmp_path / "elsewhere", progress=lambda done, total: seen.append((done, total)))
    assert path.parent == tmp_path / "elsewhere"
    assert seen and seen[-1][0] == len(data)


def test_hash_mismatch_keeps_nothing(release, monkeypatch):
    name, _, _ = release
    monkeypatch.setitem(zoo.ZOO, name, dataclasses.replace(zoo.ZOO[name], sha256="0" * 64))
    with pytest.raises(SslBenchError, match="corrupt.*sha256") as info:
        zoo.fetch(name, progress=False)
    assert "\n" not in str(info.value)
    assert list(zoo.default_cache_dir().iterdir()) == []


def test_corrupt_cached_file_is_downloaded_again(release):
    name, _, data = release
    path = zoo.fetch(name, progress=False)
    path.write_bytes(b"truncated")
    assert zoo.fetch(name, progress=False).read_bytes() == data


@pytest.mark.parametrize("field, good", [("sha256_prefix", True), ("sha256_prefix", False),
                                         ("md5_prefix", True), ("md5_prefix", False)])
def test_prefix_verification(release, monkeypatch, field, good):
    name, _, data = release
    digest = (hashlib.sha256 if field == "sha256_prefix" else hashlib.md5)(data).hexdigest()[:8]
    prefix = digest if good else ("f" if digest[0] != "f" else "e") + digest[1:]
    entry = dataclasses.replace(zoo.ZOO[name], sha256=None, **{field: prefix})
    monkeypatch.setitem(zoo.ZOO, name, entry)
    assert entry.verification == field.replace("_", "-")
    if good:
        assert zoo.fetch(name, progress=False).read_bytes() == data
    else:
        with pytest.raises(SslBenchError, match=f"published {prefix}"):
            zoo.fetch(name, progress=False)


def test_unreachable_url_is_one_line(release, monkeypatch, tmp_path):
    name, _, _ = release
    missing = (tmp_path / "gone.pt").as_uri()
    monkeypatch.setitem(zoo.ZOO, name, dataclasses.replace(zoo.ZOO[name], url=missing))
    with pytest.raises(SslBenchError, match="cannot download .*gone.pt") as info:
        zoo.fetch(name, progress=False)
    assert "\n" not in str(info.value)


def test_load_zoo_spec_carries_entry_metadata(release):
    name, source, _ = release
    loaded = load_checkpoint(f"zoo:{name}")
    assert (loaded.name, loaded.format, loaded.arch) == (name, "native", "resnet18_cifar")
    assert loaded.meta["zoo"] == name and loaded.meta["mean"] == [0.5, 0.5, 0.5]
    assert loaded.meta["verification"] == "sha256"
    reference = torch.load(source, weights_only=True)["state_dict"]
    assert torch.equal(loaded.backbone.layer1[0].conv1.weight, reference["layer1.0.conv1.weight"])
    with pytest.raises(SslBenchError, match="resnet18_cifar weights.*resnet50"):
        load_checkpoint(f"zoo:{name}", arch="resnet50")
