"""Every registered protocol follows the interface and runs end to end on tiny generated data."""

from __future__ import annotations

import dataclasses

import pytest

from benchmark.protocol import WHOLE_NETWORK, Protocol
from benchmark.registry import DATASETS, PROTOCOLS
from benchmark.runner import RunOptions, run

TINY_DATASETS = ("voc2007", "folder", "nyuv2")  # the first whose targets a protocol needs runs it
TARGETS = {"labels", "class_labels", "multilabel", "boxes", "normals"}
FAST_SETTINGS = {"epochs": "1", "batch_size": "4", "max_iter": "2", "head_channels": "32", "min_size": "96",
                 "max_size": "128", "test_size": "96", "rois_per_image": "16", "rpn_post_nms_train": "32",
                 "rpn_post_nms_test": "16", "norm": "frozen", "warmup_iters": "1"}  # CPU-sized, for training protocols
ARCH_FOR = {"detection": "resnet18"}  # a C4 backbone needs a stride-16 res4; the rest run the CIFAR stem at 32 px


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_protocol_interface(name):
    cls = PROTOCOLS.get(name)
    assert issubclass(cls, Protocol) and cls.name == name
    assert isinstance(cls.version, str) and cls.version
    assert (cls.__doc__ or "").strip(), "one-line docstring: shown by `ssl-bench list protocols`"
    assert dataclasses.is_dataclass(cls.Config) and cls.Config.__dataclass_params__.frozen
    cls.Config()
    assert cls.default_dataset in DATASETS.names()
    assert cls.needs and set(cls.needs) <= TARGETS


def tiny_dataset_for(cls) -> str:
    return next(name for name in TINY_DATASETS if set(cls.needs) <= DATASETS.get(name).provides)


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_protocol_runs_on_tiny_data(name, tmp_path, folder_root, voc_root, nyuv2_root):
    cls = PROTOCOLS.get(name)
    dataset = tiny_dataset_for(cls)
    root = {"folder": folder_root, "voc2007": voc_root, "nyuv2": nyuv2_root}[dataset]
    fields = {field.name for field in dataclasses.fields(cls.Config)}
    overrides = {key: value for key, value in FAST_SETTINGS.items() if key in fields}
    record, path = run(RunOptions(checkpoint=f"random:{ARCH_FOR.get(name, 'resnet18_cifar')}", protocol=name,
                                  dataset=dataset, limit=4 if name == "detection" else None,
                                  data_root=root, taps=("res3", "res5avg"), results_dir=tmp_path,
                                  overrides=overrides))
    assert path.exists()
    keys = {"res3", "res5avg"} if cls.per_tap else {WHOLE_NETWORK}
    assert set(record["metrics"]) == keys
    assert set(record["config"]) == fields
    declared = {spec["name"]: spec for spec in record["protocol"]["metrics"]}
    primary = record["protocol"]["primary_metric"]
    assert declared[primary]["primary"] and sum(spec["primary"] for spec in declared.values()) == 1
    for values in record["metrics"].values():
        assert primary in values and set(values) <= set(declared)
