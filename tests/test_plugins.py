"""A protocol from a separate, pip-installed package is found through its entry point and runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

PLUGIN = '''
import dataclasses

import numpy as np

from benchmark.protocol import MetricSpec, Protocol, ProtocolResult
from benchmark.registry import PROTOCOLS


@dataclasses.dataclass(frozen=True)
class CentroidConfig:
    normalize: bool = True


class CentroidProtocol(Protocol):
    """Nearest class mean accuracy (a throwaway test plugin)."""

    name, version, Config = "centroid", "7", CentroidConfig
    default_dataset, default_taps = "folder", ("res5avg",)

    def metrics(self, config, dataset):
        return (MetricSpec("top1", primary=True),)

    def run(self, ctx, config):
        metrics = {}
        for tap in ctx.progress(ctx.taps, desc="taps"):
            train = ctx.features(ctx.dataset.train_split, [tap])
            test = ctx.features(ctx.dataset.test_split, [tap])
            classes = np.unique(train.labels)
            means = np.stack([train.features[tap][train.labels == c].mean(0) for c in classes])
            dists = ((test.features[tap][:, None, :] - means[None]) ** 2).sum(-1)
            metrics[tap] = {"top1": float((classes[dists.argmin(1)] == test.labels).mean() * 100)}
        return ProtocolResult(metrics=metrics)
'''


def test_entry_point_protocol_installs_and_runs(tmp_path, folder_root):
    package = tmp_path / "plugin_src"
    (package / "centroid_plugin").mkdir(parents=True)
    (package / "centroid_plugin" / "__init__.py").write_text(PLUGIN)
    (package / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "centroid-plugin"
        version = "0.1"
        [project.entry-points."ssl_bench.protocols"]
        centroid = "centroid_plugin:CentroidProtocol"
    '''))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(package)], check=True, capture_output=True,
                   timeout=300)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listing = subprocess.run([sys.executable, "-m", "benchmark.cli", "list", "protocols"], env=env,
                             capture_output=True, text=True, timeout=120, check=True)
    assert "centroid" in listing.stdout and "knn" in listing.stdout

    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--checkpoint",
                           "random:resnet18_cifar", "--protocol", "centroid", "--data-root", str(folder_root),
                           "--results", str(results), "--workers", "0"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((results / "random-resnet18_cifar" / "centroid.json").read_text())
    assert record["protocol"] == {"name": "centroid", "version": "7", "primary_metric": "top1",
                                  "metrics": [{"name": "top1", "higher_is_better": True, "primary": True}]}
    assert 0.0 <= record["metrics"]["res5avg"]["top1"] <= 100.0
