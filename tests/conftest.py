"""Shared fixtures: tiny generated datasets in real formats and small checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own feature/zoo cache, never the user's."""
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory) -> Path:
    from benchmark.data.synthetic import write_folder

    root = tmp_path_factory.mktemp("folder")
    write_folder(root, seed=0, n_classes=3, per_class=8, size=32)
    return root


@pytest.fixture(scope="session")
def voc_root(tmp_path_factory) -> Path:
    from benchmark.data.synthetic import make_data

    return make_data("voc", tmp_path_factory.mktemp("voc"), seed=0, size="tiny")


@pytest.fixture(scope="session")
def resnet18_cifar_file(tmp_path_factory) -> Path:
    """A torchvision-format ResNet-18 (CIFAR stem) state dict, seeded."""
    from checkpoints.models import build_backbone

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "r18c.pth"
    torch.save(build_backbone("resnet18_cifar").state_dict(), path)
    return path


@pytest.fixture(scope="session")
def nyuv2_root(tmp_path_factory) -> Path:
    from benchmark.data.synthetic import make_data

    return make_data("nyuv2", tmp_path_factory.mktemp("nyuv2"), seed=0, size="tiny")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of tiny models: faster than two, and not slowed by a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
