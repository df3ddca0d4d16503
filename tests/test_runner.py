"""Runner behaviour that the CLI tests do not pin down: resume after an interruption."""

from __future__ import annotations

import pytest
import torch

from benchmark.results import PartialState
from benchmark.runner import RunOptions, resolve_device, run


def options(folder_root, results, **extra) -> RunOptions:
    return RunOptions(checkpoint="random:resnet18_cifar", protocol="knn", dataset="folder",
                      data_root=folder_root, taps=("res4", "res5avg"), results_dir=results,
                      overrides={"ks": "1,3"}, **extra)


def test_interrupted_run_resumes_with_the_same_numbers(tmp_path, folder_root, monkeypatch):
    reference, _ = run(options(folder_root, tmp_path / "reference"))

    original = PartialState.put

    def interrupt_after_first_piece(self, key, value):  # knn extracts every tap at once, then saves tap by tap
        original(self, key, value)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(PartialState, "put", interrupt_after_first_piece)
        run(options(folder_root, tmp_path / "results"))
    assert not list((tmp_path / "results").rglob("knn.json"))
    assert list((tmp_path / "results").rglob(".partial/*.json"))

    record, path = run(options(folder_root, tmp_path / "results", resume=True))
    assert record["resumed_pieces"] == 1
    assert record["metrics"] == reference["metrics"]
    assert path.exists()
    assert not list((tmp_path / "results").rglob(".partial/*.json"))


def test_auto_falls_back_to_the_cpu_and_an_explicit_cuda_without_gpu_is_refused(monkeypatch):
    from benchmark.errors import SslBenchError

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    for requested in ("cuda", "cuda:1"):
        with pytest.raises(SslBenchError, match=f"--device {requested}: CUDA is not available"):
            resolve_device(requested)
    for bad in ("gpu", "cuda:x", "cuda:"):
        with pytest.raises(SslBenchError, match="auto, cpu or cuda"):
            resolve_device(bad)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    with pytest.raises(SslBenchError, match="1 GPU"):
        resolve_device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
