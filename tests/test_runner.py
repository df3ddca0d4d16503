"""Runner behaviour that the CLI tests do not pin down: resume after an interruption."""

from __future__ import annotations

import pytest

import benchmark.features
from benchmark.runner import RunOptions, resolve_device, run


def options(folder_root, results, **extra) -> RunOptions:
    return RunOptions(checkpoint="random:resnet18_cifar", protocol="knn", dataset="folder",
                      data_root=folder_root, taps=("res4", "res5avg"), results_dir=results,
                      overrides={"ks": "1,3"}, **extra)


def test_interrupted_run_resumes_with_the_same_numbers(tmp_path, folder_root, monkeypatch):
    reference, _ = run(options(folder_root, tmp_path / "reference"))

    original = benchmark.features.FeatureExtractor.extract

    def interrupt_on_second_tap(self, dataset, split, taps, *args, **kwargs):
        if "res5avg" in taps:
            raise KeyboardInterrupt
        return original(self, dataset, split, taps, *args, **kwargs)

    monkeypatch.setattr(benchmark.features.FeatureExtractor, "extract", interrupt_on_second_tap)
    with pytest.raises(KeyboardInterrupt):
        run(options(folder_root, tmp_path / "results"))
    assert not list((tmp_path / "results").rglob("knn.json"))
    assert list((tmp_path / "results").rglob(".partial/*.json"))

    monkeypatch.setattr(benchmark.features.FeatureExtractor, "extract", original)
    record, path = run(options(folder_root, tmp_path / "results", resume=True))
    assert record["resumed_pieces"] == 1
    assert record["metrics"] == reference["metrics"]
    assert path.exists()
    assert not list((tmp_path / "results").rglob(".partial/*.json"))


def test_cuda_request_without_gpu_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device("cuda").type == "cpu"
    assert resolve_device("auto").type == "cpu"
