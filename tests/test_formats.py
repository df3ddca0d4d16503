"""Checkpoint formats: each layout round-trips to the same weights; every bad input is one clear error."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision

from benchmark.errors import SslBenchError
from checkpoints.formats import FORMATS, infer_arch, inspect_checkpoint, load_checkpoint, save_native
from checkpoints.models import build_backbone, build_seeded

State = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def r18() -> State:
    """A seeded ResNet-18 trunk plus torchvision's fc head, torchvision names."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-trivial BN statistics so a missed buffer shows
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    return net.state_dict()


def trunk(state: State) -> State:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def prefixed(state: State, prefix: str) -> State:
    return {prefix + k: v for k, v in state.items()}


def to_detectron2(key: str) -> str:
    """torchvision -> detectron2 ResNet names, written independently of the loader's inverse."""
    if key.startswith("conv1."):
        return "stem." + key
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1."):]
    layer, block, module, *rest = key.split(".")
    stage = f"res{int(layer[-1]) + 1}"
    name = {"downsample.0": "shortcut", "downsample.1": "shortcut.norm"}.get(
        f"{module}.{rest[0]}" if module == "downsample" else module)
    if module == "downsample":
        rest = rest[1:]
    elif module.startswith("bn"):
        name = f"conv{module[-1]}.norm"
    return ".".join([stage, block, name or module, *rest])


def to_sequential(key: str) -> str:
    head, _, rest = key.partition(".")
    return {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}[head] + "." + rest


LAYOUTS: dict[str, tuple[str, Callable[[State], object]]] = {
    "torchvision": ("torchvision", lambda s: s),
    "torchvision_ddp_in_state_dict": ("torchvision", lambda s: {"state_dict": {
        **prefixed(trunk(s), "module."), "module.projection_head.0.weight": torch.ones(4, 4)}, "epoch": 3}),
    "vissl_classy": ("vissl", lambda s: {"classy_state_dict": {"base_model": {"model": {
        "trunk": prefixed(trunk(s), "_feature_blocks."), "heads": {"0.clf.0.weight": torch.ones(2, 2)}}}},
        "phase_idx": 7}),
    "vissl_model_state_dict": ("vissl", lambda s: {"model_state_dict": prefixed(trunk(s), "trunk._feature_blocks.")}),
    "moco": ("moco", lambda s: {"arch": "resnet18", "epoch": 800, "state_dict": {
        **prefixed(s, "module.encoder_q."), **prefixed(trunk(s), "module.encoder_k."),
        "module.queue": torch.zeros(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}}),
    "dino": ("dino", lambda s: {"teacher": {**prefixed(trunk(s), "backbone."), "head.mlp.0.weight": torch.ones(2)},
                                "student": prefixed({k: v + 1 for k, v in trunk(s).items()}, "module.backbone."),
                                "epoch": 100}),
    "solo_learn": ("prefixed", lambda s: {"epoch": 1, "state_dict": {
        **prefixed(trunk(s), "backbone."), **prefixed(trunk(s), "momentum_backbone."),
        "projector.0.weight": torch.ones(3, 3), "classifier.weight": torch.ones(10, 512)}}),
    "mmselfsup_encoder": ("prefixed", lambda s: {"meta": {"epoch": 200}, "state_dict": prefixed(trunk(s), "encoder.")}),
    "byol_sequential": ("sequential", lambda s: {
        f"online_network.encoder.{to_sequential(k)}": v for k, v in trunk(s).items()}),
    "moco_v3": ("moco_v3", lambda s: {"arch": "resnet50", "epoch": 100, "state_dict": {
        **prefixed(s, "module.base_encoder."), **prefixed(trunk(s), "module.momentum_encoder."),
        "module.predictor.0.weight": torch.ones(4, 4)}}),
    "lightning": ("lightning", lambda s: {"epoch": 9, "pytorch-lightning_version": "2.4.0", "state_dict": {
        **prefixed(trunk(s), "model."), "head.weight": torch.ones(10, 512)}}),
    "pytorch_byol": ("sequential", lambda s: {
        "online_network_state_dict": {**{f"encoder.{to_sequential(k)}": v for k, v in trunk(s).items()},
                                      "projetion.net.0.weight": torch.ones(4, 512)},
        "target_network_state_dict": {f"encoder.{to_sequential(k)}": v + 1 for k, v in trunk(s).items()},
        "optimizer_state_dict": {"state": {}, "param_groups": []}}),
    "detectron2_fpn": ("detectron2", lambda s: {"__author__": "torchvision", "iteration": 90000, "model": {
        **{f"backbone.bottom_up.{to_detectron2(k)}": v for k, v in trunk(s).items()
           if not k.endswith("num_batches_tracked")},
        "backbone.fpn_lateral2.weight": torch.ones(2, 2), "roi_heads.box_predictor.cls_score.weight": torch.ones(2)}}),
    "detectron2_c4": ("detectron2", lambda s: {"__author__": "torchvision", "model": {
        **{("roi_heads." if k.startswith("layer4.") else "backbone.") + to_detectron2(k): v
           for k, v in trunk(s).items() if not k.endswith("num_batches_tracked")}}}),
    "detectron2_bare": ("detectron2", lambda s: {"__author__": "torchvision", "matching_heuristics": True, "model": {
        to_detectron2(k): v for k, v in trunk(s).items() if not k.endswith("num_batches_tracked")}}),
}


def assert_weights_equal(backbone: torch.nn.Module, state: State) -> None:
    ours = backbone.state_dict()
    compared = [k for k in ours if not k.endswith("num_batches_tracked")]
    assert compared
    for key in compared:
        assert torch.equal(ours[key], state[key]), key


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_round_trips_to_the_same_weights(layout, r18, tmp_path):
    expected_format, wrap = LAYOUTS[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save(wrap(r18), path)
    loaded = load_checkpoint(str(path))
    assert (loaded.format, loaded.arch, loaded.name) == (expected_format, "resnet18", layout)
    assert loaded.missing == [] and loaded.unexpected == []
    assert len(loaded.matched) == len([k for k in r18 if not k.startswith("fc.")
                                       and (expected_format != "detectron2" or "num_batches" not in k)])
    assert not loaded.backbone.training
    assert_weights_equal(loaded.backbone, r18)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    json.dumps(loaded.describe())


def test_heads_and_momentum_encoders_are_ignored_not_unexpected(r18, tmp_path):
    path = tmp_path / "moco.pth"
    torch.save(LAYOUTS["moco"][1](r18), path)
    loaded = load_checkpoint(str(path))
    assert {"fc.weight", "fc.bias", "module.queue"} <= set(loaded.ignored)
    assert any(k.startswith("module.encoder_k.") for k in loaded.ignored)
    assert loaded.describe()["unexpected_keys"] == 0


def test_dino_teacher_by_default_student_on_request(r18, tmp_path):
    path = tmp_path / "dino.pth"
    torch.save(LAYOUTS["dino"][1](r18), path)
    student = load_checkpoint(str(path), fmt="dino_student")
    assert student.format == "dino_student"
    assert torch.equal(student.backbone.conv1.weight, r18["conv1.weight"] + 1)
    assert load_checkpoint(str(path)).format == "dino"


def test_explicit_format_wins_and_timm_is_torchvision(r18, tmp_path):
    path = tmp_path / "plain.pth"
    torch.save(r18, path)
    assert load_checkpoint(str(path), fmt="timm").format == "torchvision"
    with pytest.raises(SslBenchError, match=r"not a 'moco' checkpoint.*encoder_q.*conv1\.weight"):
        load_checkpoint(str(path), fmt="moco")
    with pytest.raises(SslBenchError, match="unknown checkpoint format 'mocoo'.*Did you mean 'moco'"):
        load_checkpoint(str(path), fmt="mocoo")


def test_detectron2_msra_weights_are_built_with_stride_in_1x1(tmp_path):
    torch.manual_seed(0)
    state = build_backbone("resnet50").state_dict()
    path = tmp_path / "R-50.pth"
    torch.save({"model": {to_detectron2(k): v for k, v in state.items() if "num_batches" not in k},
                "__author__": "MSRA"}, path)
    loaded = load_checkpoint(str(path))
    assert loaded.arch == "resnet50" and loaded.meta["stride_in_1x1"] is True
    assert loaded.backbone.layer2[0].conv1.stride == (2, 2) and loaded.backbone.layer2[0].conv2.stride == (1, 1)
    assert_weights_equal(loaded.backbone, state)


def detectron2_file(tmp_path: Path, **extra: object) -> tuple[Path, State]:
    """A ResNet-50 trunk in detectron2 names, plus `extra` top-level keys (e.g. __author__)."""
    torch.manual_seed(0)
    state = build_backbone("resnet50").state_dict()
    path = tmp_path / "model_final.pth"
    torch.save({"model": {to_detectron2(k): v for k, v in state.items() if "num_batches" not in k}, **extra}, path)
    return path, state


def stride_in_1x1(loaded) -> bool:
    conv1, conv2 = loaded.backbone.layer2[0].conv1.stride, loaded.backbone.layer2[0].conv2.stride
    assert {conv1, conv2} == {(1, 1), (2, 2)}
    return conv1 == (2, 2)


@pytest.mark.parametrize("extra, said", [({}, "it has no __author__"),
                                         ({"__author__": "someone"}, "its __author__ 'someone' is not one")])
def test_detectron2_without_evidence_of_the_stride_is_refused_with_the_choices(tmp_path, extra, said):
    path, _ = detectron2_file(tmp_path, **extra)
    for call in (load_checkpoint, inspect_checkpoint):
        with pytest.raises(SslBenchError, match=rf"^{re.escape(str(path))}: a detectron2 checkpoint, but {said}.*"
                                                r"--format detectron2_c2 .*--format detectron2_torchvision"):
            call(str(path))


@pytest.mark.parametrize("author", ["torchvision", "MOCO"])
def test_detectron2_torchvision_and_moco_weights_put_the_stride_in_the_3x3(tmp_path, author):
    path, state = detectron2_file(tmp_path, __author__=author, matching_heuristics=True)
    loaded = load_checkpoint(str(path))
    assert not stride_in_1x1(loaded) and loaded.meta["stride_in_1x1"] is False
    assert loaded.meta["notes"] == [f"detectron2 ResNet built with the bottleneck stride in the 3x3 conv "
                                    f"(from __author__ '{author}')"]
    assert_weights_equal(loaded.backbone, state)


@pytest.mark.parametrize("fmt, in_1x1", [("detectron2_c2", True), ("detectron2_torchvision", False)])
def test_detectron2_stride_named_by_the_format_wins(tmp_path, fmt, in_1x1):
    path, state = detectron2_file(tmp_path)
    loaded = load_checkpoint(str(path), fmt=fmt)
    assert stride_in_1x1(loaded) is in_1x1 and loaded.format == fmt
    assert f"(from --format {fmt})" in loaded.meta["notes"][0]
    assert_weights_equal(loaded.backbone, state)


def test_run_prints_the_stride_choice(capsys, tmp_path, folder_root):
    from tests.test_cli import knn_args, run_cli

    path, _ = detectron2_file(tmp_path)
    code, out, err = run_cli(capsys, *knn_args(str(path), folder_root, tmp_path / "r", "--format",
                                               "detectron2_torchvision", "--no-cache"))
    assert code == 0, err
    assert ("checkpoint: detectron2 ResNet built with the bottleneck stride in the 3x3 conv "
            "(from --format detectron2_torchvision)") in out.splitlines()


def test_alexnet_state_dict_is_recognised(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.alexnet(weights=None).state_dict()
    path = tmp_path / "alexnet.pth"
    torch.save(state, path)
    loaded = load_checkpoint(str(path))
    assert loaded.arch == "alexnet" and loaded.format == "torchvision"
    assert {k for k in loaded.ignored} == {k for k in state if k.startswith("classifier.")}
    assert_weights_equal(loaded.backbone, state)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_native_round_trip_keeps_arch_and_meta(suffix, tmp_path):
    state = build_seeded("resnet18_cifar", 3).state_dict()
    meta = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "recipe": "simclr", "epochs": 2}
    path = save_native(tmp_path / f"run{suffix}", state, "resnet18_cifar", meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"run{suffix}"]
    loaded = load_checkpoint(str(path))
    assert (loaded.format, loaded.arch, loaded.meta) == ("native", "resnet18_cifar", meta)
    assert_weights_equal(loaded.backbone, state)


def test_native_metadata_arch_beats_key_inference_and_conflicts_are_errors(tmp_path):
    path = save_native(tmp_path / "r18.pt", build_seeded("resnet18", 0).state_dict(), "resnet18", {})
    with pytest.raises(SslBenchError, match=r"resnet18 weights \(its ssl-bench metadata says so\).*resnet50"):
        load_checkpoint(str(path), arch="resnet50")
    with pytest.raises(ValueError, match="arch"):
        save_native(tmp_path / "x.pt", {}, "resnet18", {"arch": "resnet50"})
    payload = torch.load(path, weights_only=True)
    payload["ssl_bench"]["format_version"] = 2
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(SslBenchError, match="format_version 2"):
        load_checkpoint(str(tmp_path / "future.pt"))


def test_plain_safetensors_is_read_as_torchvision(r18, tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in r18.items()}, str(path))
    loaded = load_checkpoint(str(path))
    assert loaded.format == "torchvision"
    assert_weights_equal(loaded.backbone, r18)


def test_random_spec_is_seeded_and_keyed_by_its_string():
    a, b, c = (load_checkpoint("random:resnet18"), load_checkpoint("random:resnet18"),
               load_checkpoint("random:resnet18", seed=1))
    assert a.sha256 == hashlib.sha256(b"random:resnet18:0").hexdigest() != c.sha256
    assert (a.name, a.format, a.arch, a.missing) == ("random-resnet18", "random", "resnet18", [])
    assert torch.equal(a.backbone.conv1.weight, b.backbone.conv1.weight)
    assert not torch.equal(a.backbone.conv1.weight, c.backbone.conv1.weight)
    with pytest.raises(SslBenchError, match="unknown architecture 'resnet5'.*resnet50"):
        load_checkpoint("random:resnet5")
    with pytest.raises(SslBenchError, match="random:resnet18.*--arch resnet50"):
        load_checkpoint("random:resnet18", arch="resnet50")


def test_infer_arch_from_keys_and_shapes():
    def keys(arch: str) -> State:
        return build_backbone(arch).state_dict()

    for arch in ("resnet18", "resnet50", "resnet18_cifar", "resnet50_cifar", "alexnet"):
        assert infer_arch(keys(arch)) == arch
    assert infer_arch(torchvision.models.resnet34(weights=None).state_dict()) == "resnet34"
    assert infer_arch({k: v for k, v in keys("resnet50").items() if not k.startswith("layer4.")}) == "resnet50"
    assert infer_arch({"conv1.weight": torch.ones(64, 3, 7, 7)}) is None
    for arch in ("resnet101", "resnet152", "wide_resnet50_2", "resnet50w2", "resnet50w4"):
        with torch.device("meta"):
            assert infer_arch(keys(arch)) == arch


# ------------------------------------------------------------------------------------------- bad inputs


def assert_one_line_error(call: Callable[[], object], *fragments: str) -> str:
    with pytest.raises(SslBenchError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["pickle_protocol_4", "pickle_protocol_2", "torch_save"])
def test_pickle_that_needs_code_is_refused_without_running_it(how, tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": Evil(marker)}
    if how == "torch_save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(how[-1])))
    message = assert_one_line_error(lambda: load_checkpoint(str(path)), "evil.pth", "refusing to load")
    if how != "pickle_protocol_4":
        assert "posix.system" in message or "nt.system" in message
    assert_one_line_error(lambda: inspect_checkpoint(str(path)), "evil.pth")
    assert not marker.exists()


def test_checkpoint_with_objects_names_the_class_and_where_weights_usually_are(tmp_path):
    path = tmp_path / "full.pth"
    torch.save({"teacher": {}, "model": torch.nn.Linear(2, 2)}, path)
    assert_one_line_error(lambda: load_checkpoint(str(path)), "full.pth", "torch.nn.modules.linear.Linear",
                          "ckpt['teacher']", "DINO", "ckpt['state_dict']")


@pytest.mark.parametrize("layout", ["dino", "torchvision_reference", "timm_train"])
def test_training_checkpoints_with_argparse_namespace_load_weights_only(layout, r18, tmp_path):
    args = argparse.Namespace(arch="resnet18", lr=0.1, epochs=(1, 2), data=None)
    content = {"dino": {**LAYOUTS["dino"][1](r18), "args": args},
               "torchvision_reference": {"model": r18, "optimizer": {}, "epoch": 89, "args": args},
               "timm_train": {"epoch": 3, "arch": "resnet18", "state_dict": r18, "args": args}}[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save(content, path)
    loaded = load_checkpoint(str(path))
    assert loaded.arch == "resnet18" and loaded.missing == []
    assert_weights_equal(loaded.backbone, r18)


def custom_layout(state: State) -> dict:
    return {"ema": {"net.trunk." + k: v for k, v in trunk(state).items()}, "step": 5}


def test_key_and_prefix_point_at_a_trunk_no_layout_knows(r18, tmp_path):
    path = tmp_path / "custom.pth"
    torch.save(custom_layout(r18), path)
    assert_one_line_error(lambda: load_checkpoint(str(path)), "no known checkpoint layout", "--key", "--prefix")
    loaded = load_checkpoint(str(path), key="ema", prefix="net.trunk.")
    assert (loaded.arch, loaded.missing, loaded.unexpected) == ("resnet18", [], [])
    assert_weights_equal(loaded.backbone, r18)
    nested = tmp_path / "nested.pth"
    torch.save({"a": {"b": {k: v for k, v in trunk(r18).items()}}}, nested)
    assert load_checkpoint(str(nested), key="a.b").missing == []
    sequential = tmp_path / "seq.pth"
    torch.save({"w": {f"enc.{to_sequential(k)}": v for k, v in trunk(r18).items()}}, sequential)
    assert_weights_equal(load_checkpoint(str(sequential), fmt="sequential", key="w", prefix="enc.").backbone, r18)


@pytest.mark.parametrize("kwargs, fragments", [
    ({"key": "nope"}, ["no dict under --key nope", "ema, step"]),
    ({"key": "ema", "prefix": "trunk."}, ["--prefix 'trunk.'", "net.trunk.conv1.weight"]),
    ({"key": "ema", "fmt": "native"}, ["--format native"]),
])
def test_key_and_prefix_mistakes_are_one_line(kwargs, fragments, r18, tmp_path):
    path = tmp_path / "custom.pth"
    torch.save(custom_layout(r18), path)
    assert_one_line_error(lambda: load_checkpoint(str(path), **kwargs), *fragments)


def test_cli_prints_the_load_verdicts(capsys, r18, tmp_path, folder_root):
    from tests.test_cli import knn_args, run_cli

    path = tmp_path / "custom.pth"
    torch.save(custom_layout(r18), path)
    code, out, err = run_cli(capsys, "inspect", str(path), "--key", "ema", "--prefix", "net.trunk.")
    assert code == 0, err
    assert out.splitlines()[-1] == "verdict: would load"
    cifar = {k: v for k, v in build_seeded("resnet18_cifar", 0).state_dict().items() if not k.startswith("layer4.")}
    partial = tmp_path / "partial.pth"
    torch.save(cifar, partial)
    code, out, err = run_cli(capsys, "inspect", str(partial))
    verdict = out.splitlines()[-1]
    assert code == 0 and verdict.startswith("verdict: would be refused: ") and "pass --allow-partial" in verdict
    missing = len([k for k in build_seeded("resnet18_cifar", 0).state_dict() if k.startswith("layer4.")
                   and not k.endswith("num_batches_tracked")])
    code, out, err = run_cli(capsys, *knn_args(str(partial), folder_root, tmp_path / "r", "--allow-partial",
                                               "--no-cache", "--taps", "res5avg"))
    assert code == 0, err
    assert (f"checkpoint partial: format torchvision, arch resnet18_cifar; trunk keys {len(cifar)} matched, "
            f"{missing} missing, 0 unexpected, 0 ignored; {missing} stay at their random init (--allow-partial)"
            ) in out.splitlines()


@pytest.mark.parametrize("kind", ["missing", "directory", "random_bytes", "json", "empty", "zip_not_torch",
                                  "tensor", "unknown_layout", "no_trunk_keys", "bad_safetensors"])
def test_files_that_are_not_checkpoints(kind, tmp_path):
    path = tmp_path / f"{kind}.pth"
    if kind == "directory":
        path.mkdir()
    elif kind == "random_bytes":
        path.write_bytes(b"\x13" + os.urandom(4095))
    elif kind == "json":
        path.write_text(json.dumps({"conv1.weight": [1, 2, 3]}))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zip_not_torch":
        import zipfile
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    elif kind == "tensor":
        torch.save(torch.ones(3), path)
    elif kind == "unknown_layout":
        torch.save({"weights": {"a.b": torch.ones(1)}, "epoch": 3}, path)
    elif kind == "no_trunk_keys":
        torch.save({"conv1.weight": torch.ones(64, 3, 7, 7)}, path)
    elif kind == "bad_safetensors":
        header = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 999]}}).encode()
        path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    fragments = {"missing": ["not found"], "directory": ["directory"], "unknown_layout": ["no known checkpoint layout",
                 "weights, epoch"], "no_trunk_keys": ["architecture", "--arch"], "tensor": ["Tensor"]}
    assert_one_line_error(lambda: load_checkpoint(str(path)), path.name, *fragments.get(kind, []))


def test_arch_mismatch_names_both_and_what_was_detected(r18, tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(r18, path)
    assert_one_line_error(lambda: load_checkpoint(str(path), arch="resnet50"), "resnet18 weights", "resnet50",
                   "--arch resnet18")
    cifar = tmp_path / "cifar.pth"
    torch.save(build_backbone("resnet18_cifar").state_dict(), cifar)
    assert_one_line_error(lambda: load_checkpoint(str(cifar), arch="resnet18"), "resnet18_cifar", "resnet18")
    assert_one_line_error(lambda: load_checkpoint(str(path), arch="resnet5"), "unknown architecture 'resnet5'")


def test_unregistered_architecture_is_named(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    assert_one_line_error(lambda: load_checkpoint(str(path)), "resnet34", "does not have", "resnet18")


def test_missing_keys_are_an_error_unless_allow_partial(r18, tmp_path):
    partial = {k: v for k, v in r18.items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    n_missing = len([k for k in r18 if k.startswith("layer4.") and "num_batches" not in k])
    message = assert_one_line_error(lambda: load_checkpoint(str(path)), "partial.pth", f"missing {n_missing} of",
                             "layer4.0.conv1.weight", "--allow-partial")
    assert message.count("layer4.") <= 6
    loaded = load_checkpoint(str(path), allow_partial=True, seed=5)
    assert len(loaded.missing) == n_missing and loaded.describe()["missing_keys"] == n_missing
    assert torch.equal(loaded.backbone.layer4[0].conv1.weight, build_seeded("resnet18", 5).layer4[0].conv1.weight)
    assert torch.equal(loaded.backbone.layer3[0].conv1.weight, r18["layer3.0.conv1.weight"])


def test_shape_mismatch_names_the_key(r18, tmp_path):
    bad = dict(r18)
    bad["layer2.0.conv1.weight"] = torch.ones(128, 64, 5, 5)
    path = tmp_path / "shape.pth"
    torch.save(bad, path)
    assert_one_line_error(lambda: load_checkpoint(str(path)), "layer2.0.conv1.weight", "(128, 64, 5, 5)", "(128, 64, 3, 3)")


@pytest.mark.parametrize("key, value", [("layer2.0.conv1.weight", math.nan), ("bn1.running_var", math.inf)])
def test_nan_or_inf_names_the_tensor(r18, tmp_path, key, value):
    bad = dict(r18)
    bad[key] = bad[key].clone()
    bad[key].view(-1)[3] = value
    path = tmp_path / "nonfinite.pth"
    torch.save(bad, path)
    assert_one_line_error(lambda: load_checkpoint(str(path), allow_partial=True), key, "NaN or Inf")
    assert inspect_checkpoint(str(path))["nonfinite"] == [key]


def test_inspect_reports_partial_matches_without_raising(r18, tmp_path):
    partial = {k: v for k, v in r18.items() if not k.startswith("layer4.")}
    partial["layer9.weird"] = torch.ones(1)
    partial["layer1.0.conv9.weight"] = torch.ones(1)
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    report = inspect_checkpoint(str(path))
    assert (report["format"], report["arch"], report["detected_arch"]) == ("torchvision", "resnet18", "resnet18")
    assert all(k.startswith("layer4.") for k in report["missing"]) and report["missing"]
    assert report["unexpected"] == ["layer1.0.conv9.weight"]
    assert {"fc.weight", "fc.bias", "layer9.weird"} <= set(report["ignored"])
    assert report["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", report["sha256"])
    forced = inspect_checkpoint(str(path), arch="resnet50")
    assert forced["arch"] == "resnet50" and forced["detected_arch"] == "resnet18" and forced["shape_mismatch"]


def test_format_registry_lists_every_layout():
    assert {"native", "torchvision", "timm", "vissl", "moco", "moco_v3", "dino", "dino_student", "prefixed",
            "sequential", "lightning", "detectron2", "detectron2_c2", "detectron2_torchvision"} == set(FORMATS.names())
