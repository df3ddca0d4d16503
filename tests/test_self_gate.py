"""ssl-bench gates itself: a tiny deterministic checkpoint, evaluated with knn and voc07_svm on generated data,
must reproduce tests/gate/baseline.json.

A change that moves protocol numbers (features, pooling, kNN, SVM, AP, data generation) fails this test
unless the baseline changes in the same commit. After a change that is meant to move them, regenerate the
baseline and commit it together with the change:

    SSL_BENCH_WRITE_GATE_BASELINE=1 python -m pytest tests/test_self_gate.py

The checkpoint's conv weights come from numpy's seeded generator (not torch's initialisers, so a torch
upgrade does not change the weights); it is saved with checkpoints.formats.save_native and loaded by the
runner through the real file path. The gate runs on the CPU, one torch thread, faiss without GPU. Its numbers
were bit-identical with 1 and 2 torch threads, over repeated runs, and with every conv weight multiplied by
(1 + 1e-4 N(0, 1)), far more than float differences between machines; only at 1e-3 did one kNN vote flip.
The dataset digests depend on the JPEG files' bytes: a Pillow whose encoder writes other bytes reports
config_changed (dataset_digest), which also calls for regenerating the baseline.
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.runner import RunOptions, run
from reports.regress import read_baseline, run_regress

GATE_DIR = Path(__file__).parent / "gate"
BASELINE = GATE_DIR / "baseline.json"
WRITE_SWITCH = "SSL_BENCH_WRITE_GATE_BASELINE"
TOLERANCE = 0.5  # points; CPU float differences across machines stay far below this
ARCH = "resnet18_cifar"
TAPS = ("res3", "res5avg")
RUNS = (  # protocol, dataset, data folder, overrides: small and fast
    ("knn", "folder", "folder", {"ks": "5,10", "use_gpu": "false"}),
    ("voc07_svm", "voc2007", "voc", {}),
)


def gate_checkpoint(path: Path, seed: int = 0) -> Path:
    """ResNet-18 (CIFAR stem) with conv weights ~ N(0, 2 / fan_out) from numpy's PCG64, BN at its defaults."""
    from checkpoints.formats import save_native
    from checkpoints.models import build_backbone

    rng = np.random.default_rng(seed)
    state = build_backbone(ARCH).state_dict()
    for key, tensor in state.items():
        if tensor.dim() == 4:
            fan_out = tensor.shape[0] * tensor.shape[2] * tensor.shape[3]
            state[key] = torch.from_numpy(rng.normal(0.0, np.sqrt(2.0 / fan_out), tuple(tensor.shape))).float()
    return save_native(path, state, ARCH, meta={"made_by": "tests/test_self_gate.py", "seed": seed})


def gate_data(root: Path) -> dict[str, Path]:
    """The generated datasets, in their real on-disk formats, with fixed seeds."""
    from benchmark.data.synthetic import make_data, write_folder

    return {"folder": write_folder(root / "folder", seed=0, n_classes=8, per_class=10, size=32),
            "voc": make_data("voc", root / "voc", seed=0, size="tiny")}


def evaluate(checkpoint: Path, data: dict[str, Path], results: Path, cache: Path,
             protocols: tuple[str, ...] = ("knn", "voc07_svm")) -> None:
    for protocol, dataset, folder, overrides in RUNS:
        if protocol in protocols:
            run(RunOptions(checkpoint=str(checkpoint), protocol=protocol, dataset=dataset, data_root=data[folder],
                           taps=TAPS, results_dir=results, device="cpu", overrides=dict(overrides), name="gate",
                           cache_dir=cache, workers=0, seed=0))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gate(tmp_path_factory, one_torch_thread) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate")
    paths = {"checkpoint": gate_checkpoint(root / "gate.pt"), "results": root / "results",
             "cache": root / "cache", **gate_data(root / "data")}
    evaluate(paths["checkpoint"], paths, paths["results"], paths["cache"])
    return paths


def test_gate_reproduces_the_committed_baseline(gate, tmp_path):
    if os.environ.get(WRITE_SWITCH) == "1":
        assert run_regress(BASELINE, [gate["results"]], tolerance=TOLERANCE, write_baseline=True,
                           emit=lambda text: None) == 0
    baseline = read_baseline(BASELINE)
    assert baseline.tolerance == TOLERANCE
    assert {e.protocol for e in baseline.entries} == {"knn", "voc07_svm"}
    assert {e.tap for e in baseline.entries} == set(TAPS)
    summary: list[str] = []
    junit = tmp_path / "gate.xml"
    code = run_regress(BASELINE, [gate["results"]], junit_path=junit, emit=summary.append)
    assert code == 0, (f"protocol numbers moved; if intended, regenerate with {WRITE_SWITCH}=1 "
                       f"python -m pytest tests/test_self_gate.py\n{summary[0]}")
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("tests")) == len(baseline.entries) and suite.get("failures") == "0"
    first_line = summary[0].splitlines()[0]
    assert "0 failed" in first_line and " new" not in first_line


def test_gate_fails_when_a_protocol_moves_numbers(gate, tmp_path, monkeypatch):
    """knn made 2 points worse through the real run -> record -> regress path: exit 1, knn entries dropped."""
    from protocols.knn import KnnProtocol

    original = KnnProtocol._run_tap

    def worse(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        result["metrics"] = {name: value - 2.0 for name, value in result["metrics"].items()}
        return result

    monkeypatch.setattr(KnnProtocol, "_run_tap", worse)
    results = tmp_path / "results"
    shutil.copytree(gate["results"], results)
    evaluate(gate["checkpoint"], gate, results, gate["cache"], protocols=("knn",))
    summary: list[str] = []
    junit = tmp_path / "gate.xml"
    assert run_regress(BASELINE, [results], junit_path=junit, emit=summary.append) == 1
    knn_entries = [e for e in read_baseline(BASELINE).entries if e.protocol == "knn"]
    assert f"{len(knn_entries)} failed ({len(knn_entries)} dropped)" in summary[0]
    assert "| dropped | gate | knn | res5avg | top1_k10 |" in summary[0]
    failures = ET.parse(junit).getroot().findall(".//testcase/failure")
    assert {f.get("type") for f in failures} == {"dropped"} and len(failures) == len(knn_entries)


def test_gate_fails_for_other_weights(gate, tmp_path):
    """Weights from another seed under the same name, in fresh results as CI makes them (a results folder refuses
    other weights under a name it holds): numbers move (some down, some up), no setting changed."""
    results = tmp_path / "results"
    evaluate(gate_checkpoint(tmp_path / "other.pt", seed=1), gate, results, tmp_path / "cache")
    summary: list[str] = []
    assert run_regress(BASELINE, [results], emit=summary.append) == 1
    first_line = summary[0].splitlines()[0]
    assert "dropped" in first_line and "improved" in first_line
    assert "config_changed" not in first_line and "missing" not in first_line


def test_baseline_file_is_committed_sorted_and_tidy():
    document = json.loads(BASELINE.read_text())
    keys = [(e["checkpoint"], e["protocol"], e["tap"], e["metric"]) for e in document["entries"]]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert all(e["std"] is None and e["higher_is_better"] for e in document["entries"])
