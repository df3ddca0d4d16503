"""Every registered protocol follows the interface and runs end to end on tiny generated data."""

from __future__ import annotations

import dataclasses

import pytest

from benchmark.protocol import Protocol
from benchmark.registry import DATASETS, PROTOCOLS
from benchmark.runner import RunOptions, run

TINY_DATASET_FOR_TASK = {"multiclass": "folder", "multilabel": "voc2007"}


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_protocol_interface(name):
    cls = PROTOCOLS.get(name)
    assert issubclass(cls, Protocol) and cls.name == name
    assert isinstance(cls.version, str) and cls.version
    assert (cls.__doc__ or "").strip(), "one-line docstring: shown by `ssl-bench list protocols`"
    assert dataclasses.is_dataclass(cls.Config) and cls.Config.__dataclass_params__.frozen
    cls.Config()
    assert cls.default_dataset in DATASETS.names()
    assert set(cls.supported_tasks) <= {"multiclass", "multilabel", "dense"}


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_protocol_runs_on_tiny_data(name, tmp_path, folder_root, voc_root):
    cls = PROTOCOLS.get(name)
    task = next(t for t in cls.supported_tasks if t in TINY_DATASET_FOR_TASK)
    dataset = TINY_DATASET_FOR_TASK[task]
    root = folder_root if dataset == "folder" else voc_root
    record, path = run(RunOptions(checkpoint="random:resnet18_cifar", protocol=name, dataset=dataset,
                                  data_root=root, taps=("res3", "res5avg"), results_dir=tmp_path))
    assert path.exists()
    assert set(record["metrics"]) == {"res3", "res5avg"}
    assert set(record["config"]) == {field.name for field in dataclasses.fields(cls.Config)}
    assert record["protocol"]["primary_metric"] in record["metrics"]["res3"]
