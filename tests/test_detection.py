"""The detection protocol: a short Faster R-CNN schedule end to end through the CLI on generated VOC, the
model variants, and bad input (missing image, unknown class, boxes outside the image or empty, wrong arch)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.cli import main
from benchmark.data.synthetic import write_voc
from benchmark.data.voc import VOC_CLASSES, Voc2007
from benchmark.errors import SslBenchError
from checkpoints.models import build_seeded
from protocols.detection import DetectionConfig, build_detector, read_annotations, resize_and_flip
from protocols.voc_detection_eval import read_comp4, score_detections

# a C4 step on the CPU costs about 1 GFLOP per RoI through res5: keep RoIs and proposals few
SMALL = ["--set", "max_iter=2", "--set", "batch_size=2", "--set", "min_size=96", "--set", "test_size=96",
         "--set", "norm=frozen", "--set", "warmup_iters=1", "--set", "rois_per_image=16",
         "--set", "rpn_post_nms_train=32", "--set", "rpn_post_nms_test=16", "--set", "test_batch_size=4"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[ssl-bench]")]
    assert len(lines) == 1 and lines[0].startswith("ssl-bench: error: "), err
    return lines[0]


def detection_args(root: Path, results: Path, *extra: str, checkpoint: str = "random:resnet18") -> list[str]:
    return ["run", "--checkpoint", checkpoint, "--protocol", "detection", "--dataset", "voc2007",
            "--data-root", str(root), "--results", str(results), "--workers", "0", *SMALL, *extra]


def test_short_schedule_writes_a_record_and_comp4_files(voc_root: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(capsys, *detection_args(voc_root, tmp_path, "--limit", "6"))
    assert code == 0, err
    (path,) = [p for p in tmp_path.rglob("*.json") if ".artifacts" not in str(p)]
    record = json.loads(path.read_text())
    assert record["protocol"]["primary_metric"] == "AP50"
    metrics = record["metrics"]["network"]
    assert set(metrics) == {"AP50", "AP", "AP75"} and all(0 <= v <= 100 for v in metrics.values())
    details = record["details"]
    (entry,) = details["training"]["history"]
    assert entry["step"] == 2 and {"loss", "loss_classifier", "loss_box_reg", "loss_objectness",
                                   "loss_rpn_box_reg"} <= set(entry)
    assert details["training"]["spec"]["max_steps"] == 2 and details["model"]["head"] == "c4"
    assert set(details["per_class"]) == set(VOC_CLASSES) and "11-point" in details["evaluation"]["convention"]
    artifacts = path.parent / record["artifacts"]
    assert sorted(p.name for p in artifacts.glob("comp4_det_test_*.txt")) == sorted(
        f"comp4_det_test_{c}.txt" for c in VOC_CLASSES)
    assert any((artifacts / "tensorboard").iterdir())
    # anyone re-scoring the files gets the record's numbers
    voc = Voc2007(voc_root, limit=6)
    truth = read_annotations(voc, "test").truth()
    again = score_detections(read_comp4(artifacts, voc.ids("test"), VOC_CLASSES), truth, VOC_CLASSES).summary()
    assert again == pytest.approx(metrics)


def test_detector_variants_train_and_freeze() -> None:
    image = torch.rand(3, 64, 80)
    target = {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([3])}
    for head, freeze_at, norm in (("c4", 4, "sync"), ("fpn", 2, "frozen")):
        config = DetectionConfig(head=head, freeze_at=freeze_at, norm=norm, rois_per_image=8, rpn_post_nms_train=16,
                                 min_size=(64,), test_size=64)
        trunk = build_seeded("resnet18", seed=0)
        model = build_detector(trunk, config, 20, (0.5,) * 3, (0.25,) * 3).train()
        losses = model([image], [target])
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        sum(losses.values()).backward()
        frozen = [name for name, p in trunk.named_parameters() if not p.requires_grad]
        trained = [name for name, p in trunk.named_parameters() if p.requires_grad]
        prefixes = ("conv1", "layer1", "layer2", "layer3")[:freeze_at]
        assert frozen and all(name.startswith(prefixes) for name in frozen)
        assert trained and all(not name.startswith(prefixes) for name in trained)
        batchnorms = [m for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bool(batchnorms) == (norm == "sync")
        assert model.roi_heads.box_predictor.cls_score.out_features == 21


def test_resize_and_flip_moves_boxes_with_the_image() -> None:
    image = torch.zeros(3, 50, 100)
    image[:, 10:20, 5:30] = 1.0  # object at x 5..30, y 10..20 (0-based continuous)
    boxes = np.array([[5.0, 10.0, 30.0, 20.0]])
    out, moved = resize_and_flip(image, boxes, short=100, longest=1333, flip=True)
    assert out.shape == (3, 100, 200)
    np.testing.assert_allclose(moved, [[200 - 60, 20, 200 - 10, 40]])
    x1, y1, x2, y2 = moved[0].astype(int)
    assert out[0, y1 + 1:y2 - 1, x1 + 1:x2 - 1].min() > 0.9 and out[0, :, :x1 - 1].max() < 0.1
    _, capped = resize_and_flip(image, boxes, short=800, longest=1000, flip=False)
    np.testing.assert_allclose(capped, boxes * 10)  # the longer side caps the scale at 10


def one_class_voc(root: Path) -> Path:
    """`make-data voc` images whose objects are all relabelled one class: a task a ResNet-18 from random init
    starts to learn within a hundred CPU-sized steps (twenty textured classes take far longer)."""
    write_voc(root, seed=0, n_trainval=40, n_test=20, size=64)
    for xml in (root / "VOCdevkit" / "VOC2007" / "Annotations").glob("*.xml"):
        xml.write_text(re.sub(r"<name>[^<]*</name>", f"<name>{VOC_CLASSES[0]}</name>", xml.read_text()))
    return root


FEW, MORE = 2, 120  # iterations; measured AP50 0.0 after 2 and 27.2 after 120 (lr 0.01, 64 px, batch 2)
LONGER_LR = 0.01  # 0.02 diverges within 25 steps from random init at this batch size
MARGIN = 10.0  # AP50 points


@pytest.mark.slow  # two runs of a Faster R-CNN on the CPU: about 5 minutes on 2 busy cores
def test_training_longer_beats_a_few_iterations(tmp_path: Path, capsys) -> None:
    root = one_class_voc(tmp_path / "voc")
    ap50 = {}
    for iterations in (FEW, MORE):
        code, _, err = run_cli(capsys, *detection_args(root, tmp_path / f"r{iterations}", "--set", "min_size=64",
                                                       "--set", "test_size=64", "--set", f"lr={LONGER_LR}",
                                                       "--set", f"max_iter={iterations}", "--no-cache"))
        assert code == 0, err
        (path,) = [p for p in (tmp_path / f"r{iterations}").rglob("*.json") if ".artifacts" not in str(p)]
        ap50[iterations] = json.loads(path.read_text())["metrics"]["network"]["AP50"]
    assert ap50[MORE] > ap50[FEW] + MARGIN, ap50


@pytest.fixture()
def small_voc(tmp_path: Path) -> Path:
    return write_voc(tmp_path / "voc", seed=3, n_trainval=6, n_test=4, size=48)


def first_annotation(root: Path) -> Path:
    return sorted((root / "VOCdevkit" / "VOC2007" / "Annotations").glob("*.xml"))[0]


def test_box_outside_the_image_is_clipped_and_named(small_voc: Path) -> None:
    path = first_annotation(small_voc)
    text = path.read_text()
    path.write_text(_set_first(text, "xmin", "-3"))
    voc = Voc2007(small_voc)
    split = "trainval" if path.stem in voc.ids("trainval") else "test"
    annotations = read_annotations(voc, split)
    assert annotations.clipped == [str(path)]
    assert min(b[:, 0].min() for b in annotations.boxes if len(b)) == 1.0


def _set_first(xml: str, key: str, value: str) -> str:
    start = xml.index(f"<{key}>") + len(key) + 2
    return xml[:start] + value + xml[xml.index(f"</{key}>", start):]


@pytest.mark.parametrize("case", ["empty box", "unknown class", "missing image"])
def test_bad_annotations_and_images_stop_with_one_line(small_voc: Path, tmp_path: Path, capsys, case: str) -> None:
    path = first_annotation(small_voc)
    text = path.read_text()
    if case == "empty box":
        path.write_text(_set_first(_set_first(text, "xmin", "30"), "xmax", "10"))
        expected = f"{path}: object 1 has an empty box"
    elif case == "unknown class":
        path.write_text(_set_first(text, "name", "unicorn"))
        expected = f"{path}: unknown VOC class 'unicorn'"
    else:
        image = small_voc / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"{path.stem}.jpg"
        image.unlink()
        expected = str(image)
    code, out, err = run_cli(capsys, *detection_args(small_voc, tmp_path / "results"))
    line = error_line(code, err)
    assert expected in line, line


def test_an_arch_without_a_c4_trunk_is_refused(small_voc: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(capsys, *detection_args(small_voc, tmp_path / "results",
                                                     checkpoint="random:resnet18_cifar"))
    assert "checkpoint architecture 'resnet18_cifar' cannot be a C4 backbone" in error_line(code, err)
    with pytest.raises(SslBenchError, match="expected 0 .* to 4"):
        from benchmark.config import build_config
        build_config(DetectionConfig, {"freeze_at": "5"}, owner="protocol 'detection'")
