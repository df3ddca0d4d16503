"""Faster R-CNN fine-tuning on VOC from any ResNet checkpoint (PROTOCOLS.md, detection).

R50-C4 as in FAIR and VISSL, on torchvision's detection package: the trunk
up to res4 is a stride-16 backbone, res5 is the RoI box head (RoIAlign 14x14,
res5, global average pool), then a FastRCNNPredictor; `head=fpn` builds
torchvision's ResNet-FPN instead (FPN on res2..res5, two-MLP box head).
Defaults follow VISSL's MoCo-v2 schedule: batch 16, SGD lr 0.02, momentum 0.9,
weight decay 1e-4, linear warmup (PROTOCOLS.md: 1000 iterations), 24k
iterations, x0.1 at 18k and 22k; shorter side drawn from 480..800 (step 32)
per training image, 800 at test, longer side at most 1333; BatchNorm
synchronised (`norm=sync`) or frozen (`norm=frozen`, FAIR), stages before
`freeze_at` frozen. Training runs on the engine (resume, DDP, AMP, TensorBoard,
progress); the per-image resize and flip are drawn from (seed, epoch, image).

Ground truth as detectron2 reads VOC: difficult objects kept for training
(`train_difficult`), boxes moved to 0-based continuous coordinates by
subtracting 1 from xmin and ymin; predictions go back by adding 1. Test
detections (score >= 0.05, at most 100 per image) are written as the devkit's
comp4 files in the run's artifacts folder and scored from those files by
protocols.voc_detection_eval, as detectron2's PascalVOCDetectionEvaluator
scores its own.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Literal

import numpy as np
import torch
import torch.utils.data
from PIL import Image
from torch import nn

from benchmark import distributed
from benchmark.accel import eval_loader, worker_errors
from benchmark.config import check_split_fields, is_int
from benchmark.data.images import load_rgb
from benchmark.errors import SslBenchError
from benchmark.protocol import WHOLE_NETWORK, MetricSpec, Protocol, ProtocolResult, RunContext
from benchmark.registry import PROTOCOLS
from benchmark.training import OptimSpec, TrainSpec
from benchmark.training.sampling import sample_seed
from protocols.classification import training_details
from protocols.voc_detection_eval import (CONVENTION, Detections, GroundTruth, read_comp4, score_detections,
                                          write_comp4)

C4_ARCHS = ("resnet18", "resnet50")
TRAIN_SIZES = tuple(range(480, 801, 32))  # detectron2's MIN_SIZE_TRAIN for VOC: 480, 512, ..., 800
STAGES = ("stem", "res2", "res3", "res4", "res5")


@dataclasses.dataclass(frozen=True)
class DetectionConfig:
    """Settings of the detection protocol (VISSL's MoCo-v2 VOC schedule by default)."""

    max_iter: int = 24000
    batch_size: int = 16  # images per optimiser step, over every process
    lr: float = 0.02
    warmup_iters: int = 1000  # PROTOCOLS.md; linear from lr x 0.001
    steps: tuple[int, ...] = (18000, 22000)  # iterations where the lr is multiplied by 0.1
    weight_decay: float = 1e-4  # not on BatchNorm and biases
    momentum: float = 0.9
    min_size: tuple[int, ...] = TRAIN_SIZES  # shorter side of a training image, drawn per image
    max_size: int = 1333  # longer side at most, train and test
    test_size: int = 800  # shorter side at test
    freeze_at: int = 0  # stages frozen: 0 none (VISSL), 1 stem, 2 +res2, 3 +res3, 4 +res4 (FAIR's frozen variant)
    norm: Literal["sync", "frozen"] = "sync"  # BatchNorm synchronised across GPUs (VISSL) or frozen (FAIR)
    head: Literal["c4", "fpn"] = "c4"
    train_difficult: bool = True  # detectron2 trains on difficult objects; they are never scored
    rpn_pre_nms_train: int | None = None  # None: 12000 for c4 (detectron2), torchvision's 2000 per level for fpn
    rpn_post_nms_train: int | None = None  # None: 2000
    rpn_pre_nms_test: int | None = None  # None: 6000 for c4, 1000 for fpn
    rpn_post_nms_test: int | None = None  # None: 1000
    rois_per_image: int = 512
    score_thresh: float = 0.05
    detections_per_image: int = 100
    ap_interpolation: Literal["voc07", "all_point"] = "voc07"  # voc07: detectron2's 11-point AP on VOC2007
    test_batch_size: int = 1  # detectron2 tests one image at a time (batching pads, which moves boxes a little)
    amp: str = "auto"
    save_every: int = 500
    log_every: int = 20
    train_split: str | None = None
    test_split: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "min_size", tuple(self.min_size))
        for name in ("max_iter", "batch_size", "max_size", "test_size", "rois_per_image", "detections_per_image",
                     "test_batch_size", "save_every", "log_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        for name in ("rpn_pre_nms_train", "rpn_post_nms_train", "rpn_pre_nms_test", "rpn_post_nms_test"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(f"{name}: expected an integer >= 1 or none, got {value!r}")
        if not is_int(self.warmup_iters) or self.warmup_iters < 0:
            raise ValueError(f"warmup_iters: expected an integer >= 0, got {self.warmup_iters!r}")
        if not all(is_int(s) and s > 0 for s in self.steps) or list(self.steps) != sorted(self.steps):
            raise ValueError(f"steps: expected increasing positive iterations, got {self.steps!r}")
        if not self.min_size or not all(is_int(s) and s > 0 for s in self.min_size):
            raise ValueError(f"min_size: expected one or more positive sizes, got {self.min_size!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr: expected a number > 0, got {self.lr!r}")
        if not 0 <= self.weight_decay or not 0 <= self.momentum < 1:
            raise ValueError("weight_decay must be >= 0 and momentum in [0, 1)")
        if not 0 <= self.score_thresh < 1:
            raise ValueError(f"score_thresh: expected a number in [0, 1), got {self.score_thresh!r}")
        if not is_int(self.freeze_at) or not 0 <= self.freeze_at <= 4:
            raise ValueError(f"freeze_at: expected 0 (nothing frozen) to 4 (stem to res4 frozen), "
                             f"got {self.freeze_at!r}")
        if self.norm not in ("sync", "frozen"):
            raise ValueError(f"norm: expected sync or frozen, got {self.norm!r}")
        if self.head not in ("c4", "fpn"):
            raise ValueError(f"head: expected c4 or fpn, got {self.head!r}")
        if self.ap_interpolation not in ("voc07", "all_point"):
            raise ValueError(f"ap_interpolation: expected voc07 or all_point, got {self.ap_interpolation!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp: expected auto, bf16, fp16 or off, got {self.amp!r}")
        check_split_fields(self)


# ---------------------------------------------------------------- the model

class Res5BoxHead(nn.Module):
    """The C4 box head: res5 (stride 2) on the 14x14 RoI features, then global average pooling."""

    def __init__(self, res5: nn.Module) -> None:
        super().__init__()
        self.res5 = res5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).mean(dim=(2, 3))


def _presized_transform_class() -> type:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class PresizedTransform(GeneralizedRCNNTransform):
        """torchvision's transform, except that training images arrive already resized (seeded, per image)."""

        def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None) -> Any:
            if self.training:
                return image, target
            return super().resize(image, target)

    return PresizedTransform


def check_arch(arch: str) -> None:
    if arch not in C4_ARCHS:
        raise SslBenchError(f"detection needs a ResNet-18 or ResNet-50 trunk (stride-16 res4 and a res5 box head); "
                            f"checkpoint architecture '{arch}' cannot be a C4 backbone")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d below `module` replaced by a FrozenBatchNorm2d holding its statistics and affine."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, name).copy_(getattr(module, name).detach())
        return frozen
    for name, child in module.named_children():
        setattr(module, name, freeze_batchnorm(child))
    return module


STAGE_MODULES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))


def prepare_trunk(trunk: nn.Module, config: DetectionConfig) -> None:
    """Train everything but the first `freeze_at` stages (weights and BN frozen); norm=frozen freezes every BN."""
    trunk.requires_grad_(True)
    for stage in STAGE_MODULES[:config.freeze_at]:
        for name in stage:
            module = getattr(trunk, name)
            module.requires_grad_(False)
            setattr(trunk, name, freeze_batchnorm(module))
    if config.norm == "frozen":
        freeze_batchnorm(trunk)


def build_detector(trunk: nn.Module, config: DetectionConfig, n_classes: int, mean: tuple[float, ...],
                   std: tuple[float, ...]) -> nn.Module:
    """torchvision FasterRCNN (C4 or FPN) on the trunk's layers, n_classes + background outputs."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    check_arch(getattr(trunk, "arch", type(trunk).__name__))
    prepare_trunk(trunk, config)
    res4, res5 = trunk.tap("res4").channels, trunk.tap("res5").channels
    common = dict(min_size=config.test_size, max_size=config.max_size, image_mean=list(mean), image_std=list(std),
                  box_batch_size_per_image=config.rois_per_image, box_score_thresh=config.score_thresh,
                  box_detections_per_img=config.detections_per_image)
    c4 = config.head == "c4"
    rpn = {"rpn_pre_nms_top_n_train": config.rpn_pre_nms_train or (12000 if c4 else 2000),
           "rpn_post_nms_top_n_train": config.rpn_post_nms_train or 2000,
           "rpn_pre_nms_top_n_test": config.rpn_pre_nms_test or (6000 if c4 else 1000),
           "rpn_post_nms_top_n_test": config.rpn_post_nms_test or 1000}
    if c4:
        body = nn.Sequential(OrderedDict((name, getattr(trunk, name)) for name in (
            "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")))
        body.out_channels = res4
        model = FasterRCNN(
            body, num_classes=None,
            rpn_anchor_generator=AnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),)),
            box_roi_pool=MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=0),
            box_head=Res5BoxHead(trunk.layer4), box_predictor=FastRCNNPredictor(res5, n_classes + 1),
            **rpn, **common)
    else:
        channels = [trunk.tap(f"res{k}").channels for k in range(2, 6)]
        body = BackboneWithFPN(trunk, {f"layer{k}": str(k - 1) for k in range(1, 5)}, channels, 256,
                               extra_blocks=LastLevelMaxPool())
        model = FasterRCNN(body, num_classes=n_classes + 1, **rpn, **common)
    model.transform = _presized_transform_class()(config.test_size, config.max_size, list(mean), list(std))
    return model


# ---------------------------------------------------------------- data

@dataclasses.dataclass
class Annotations:
    """Checked objects of one split: boxes 1-based inclusive (clipped to the image), labels, difficult, sizes."""

    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    difficult: list[np.ndarray]
    sizes: list[tuple[int, int]]  # (width, height)
    clipped: list[str]  # files whose boxes were clipped

    def truth(self) -> GroundTruth:
        return GroundTruth(self.boxes, self.labels, self.difficult)


def read_annotations(dataset: Any, split: str) -> Annotations:
    """Objects and image sizes of every image of a split, checked once before training or scoring.

    A listed image that is missing, an unknown class (read_objects) or a box with
    no area raises SslBenchError naming the file; a box reaching outside the
    image is clipped to it and the file reported in `clipped`.
    """
    paths = dataset.image_paths(split)
    out = Annotations([], [], [], [], [])
    for i, path in enumerate(paths):
        if not path.is_file():
            raise SslBenchError(f"image {path} is listed in split '{split}' of dataset '{dataset.name}' but missing; "
                                "restore it or remove it from the ImageSets list")
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, SyntaxError, ValueError) as error:
            raise SslBenchError(f"cannot read image {path} ({error}); replace or re-extract this file") from error
        objects = dataset.objects(split, i)
        boxes = objects["boxes"].astype(np.float64)
        where = path.parent.parent / "Annotations" / f"{path.stem}.xml"  # VOC layout, beside JPEGImages/
        if not np.isfinite(boxes).all():
            raise SslBenchError(f"{where}: a bndbox has a missing or non-numeric coordinate")
        limits = np.array([1, 1, width, height], dtype=np.float64)
        clipped = np.clip(boxes, 1, limits[[2, 3, 2, 3]])
        if not np.array_equal(clipped, boxes):
            out.clipped.append(str(where))
        bad = np.flatnonzero((clipped[:, 2] < clipped[:, 0]) | (clipped[:, 3] < clipped[:, 1]))
        if len(bad):
            xmin, ymin, xmax, ymax = boxes[bad[0]]
            raise SslBenchError(f"{where}: object {bad[0] + 1} has an empty box (xmin {xmin:g}, ymin {ymin:g}, "
                                f"xmax {xmax:g}, ymax {ymax:g}) inside the {width}x{height} image; fix or remove it")
        out.boxes.append(clipped)
        out.labels.append(objects["labels"])
        out.difficult.append(objects["difficult"])
        out.sizes.append((width, height))
    return out


def image_tensor(path: Any) -> torch.Tensor:
    from torchvision.transforms.functional import pil_to_tensor
    return pil_to_tensor(load_rgb(path)).float().div_(255.0)


class TrainImages(torch.utils.data.Dataset):
    """Item i: (index, image resized and maybe flipped, target {boxes 0-based, labels 1..C}), seeded per image."""

    def __init__(self, paths: list[Any], annotations: Annotations, config: DetectionConfig, seed: int) -> None:
        self.paths = paths
        self.annotations = annotations
        self.config = config
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, dict[str, torch.Tensor]]:
        a, config = self.annotations, self.config
        keep = np.ones(len(a.labels[index]), dtype=bool) if config.train_difficult else ~a.difficult[index]
        boxes = a.boxes[index][keep].copy()
        boxes[:, :2] -= 1.0  # detectron2: 1-based inclusive -> 0-based continuous
        image = image_tensor(self.paths[index])
        rng = np.random.default_rng(sample_seed(self.seed, self.epoch, index))
        image, boxes = resize_and_flip(image, boxes, int(rng.choice(config.min_size)), config.max_size,
                                       bool(rng.random() < 0.5))
        target = {"boxes": torch.from_numpy(boxes).float(),
                  "labels": torch.from_numpy(a.labels[index][keep] + 1).long()}
        return index, image, target


def resize_and_flip(image: torch.Tensor, boxes: np.ndarray, short: int, longest: int,
                    flip: bool) -> tuple[torch.Tensor, np.ndarray]:
    """Resize so the shorter side is `short` (the longer at most `longest`), boxes with it; flip horizontally."""
    height, width = image.shape[-2:]
    scale = min(short / min(height, width), longest / max(height, width))
    new_h, new_w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
    image = nn.functional.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    boxes = boxes * np.array([new_w / width, new_h / height] * 2)
    if flip:
        image = image.flip(-1)
        boxes = np.stack([new_w - boxes[:, 2], boxes[:, 1], new_w - boxes[:, 0], boxes[:, 3]], axis=1)
    return image, boxes


class TestImages(torch.utils.data.Dataset):
    """Item i: (index, image at its own size); the model resizes to test_size and maps boxes back."""

    def __init__(self, paths: list[Any]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, image_tensor(self.paths[index])


def collate(items: list[tuple]) -> tuple:
    """(indices tensor first, so the engine counts images by it; then lists of images and targets)."""
    return (torch.tensor([item[0] for item in items]), *[[item[k] for item in items] for k in range(1, len(items[0]))])


def detection_step(model: nn.Module, batch: tuple) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Faster R-CNN's summed loss; its four components are logged."""
    _, images, targets = batch
    losses = model(images, targets)
    return sum(losses.values()), {name: value.detach() for name, value in losses.items()}


@torch.no_grad()
def detect(ctx: RunContext, model: nn.Module, paths: list[Any], batch_size: int, policy: Any,
           desc: str) -> Detections:
    """Detections of every test image (every process's shard gathered), boxes 1-based inclusive, classes 0-based."""
    loader, _ = eval_loader(TestImages(paths), batch_size, ctx.workers, ctx.device, collate_fn=collate)
    parts = []
    was_training = model.training
    model.eval()
    try:
        with worker_errors():
            for indices, images in ctx.progress(loader, desc=desc, total=len(loader)):
                with policy.autocast():
                    outputs = model([image.to(ctx.device) for image in images])
                for index, out in zip(indices.tolist(), outputs):
                    boxes = out["boxes"].float().cpu().numpy().astype(np.float64)
                    boxes[:, :2] += 1.0  # back to VOC's 1-based inclusive coordinates
                    parts.append(Detections(np.full(len(boxes), index), out["labels"].cpu().numpy() - 1,
                                            out["scores"].float().cpu().numpy().astype(np.float64), boxes))
    finally:
        model.train(was_training)
    gathered = [part for rank_parts in distributed.all_gather_objects(parts) for part in rank_parts]
    seen: set[int] = set()
    unique = []
    for part in gathered:  # the sampler pads shards by repeating images: keep one copy of each
        image = int(part.image[0]) if len(part) else None
        if image is None or image not in seen:
            unique.append(part)
            if image is not None:
                seen.add(image)
    return Detections.concat(unique)


@PROTOCOLS.register("detection")
class DetectionProtocol(Protocol):
    """Faster R-CNN (R50-C4 or FPN) fine-tuned on VOC from the checkpoint; AP50 (VOC07 11-point), AP, AP75."""

    name = "detection"
    version = "1"
    Config = DetectionConfig
    default_dataset = "voc0712"
    needs = ("boxes",)
    per_tap = False

    def metrics(self, config: DetectionConfig, dataset: Any) -> tuple[MetricSpec, ...]:
        return MetricSpec("AP50", primary=True), MetricSpec("AP"), MetricSpec("AP75")

    def run(self, ctx: RunContext, config: DetectionConfig) -> ProtocolResult:
        dataset = ctx.dataset
        train_split = config.train_split or dataset.train_split
        test_split = config.test_split or dataset.test_split
        check_arch(ctx.backbone.arch)
        train_ann = read_annotations(dataset, train_split)
        test_ann = read_annotations(dataset, test_split)
        clipped = train_ann.clipped + test_ann.clipped
        if clipped:
            ctx.log(f"warning: boxes reaching outside their image were clipped to it in {len(clipped)} "
                    f"annotation files: {', '.join(clipped[:5])}{', ...' if len(clipped) > 5 else ''}")
        model = build_detector(ctx.trunk_copy(), config, len(dataset.classes), ctx.input.mean, ctx.input.std)
        optim = OptimSpec(name="sgd", lr=config.lr, momentum=config.momentum, nesterov=False,
                          weight_decay=config.weight_decay, no_decay_norm_and_bias=True, schedule="step",
                          warmup_steps=config.warmup_iters, warmup_start_factor=0.001, milestones=config.steps,
                          gamma=0.1)
        spec = TrainSpec(optim=optim, batch_size=config.batch_size, max_steps=config.max_iter, amp=config.amp,
                         sync_bn=config.norm == "sync", save_every=config.save_every, log_every=config.log_every,
                         workers=ctx.workers, seed=ctx.seed)
        trainer = ctx.trainer(model, spec)
        train_data = TrainImages(dataset.image_paths(train_split), train_ann, config, ctx.seed)
        result = trainer.fit(train_data, detection_step, collate_fn=collate)

        test_paths = dataset.image_paths(test_split)
        detections = detect(ctx, trainer.model, test_paths, config.test_batch_size, trainer.policy,
                            desc=f"detect {test_split}")
        image_ids = [image_id.rsplit("/", 1)[-1] for image_id in dataset.ids(test_split)]
        if distributed.is_main_process():  # scored from the files, as detectron2 does: what anyone re-scores
            write_comp4(ctx.artifacts, detections, image_ids, dataset.classes)
            detections = read_comp4(ctx.artifacts, image_ids, dataset.classes)
        scores = score_detections(detections, test_ann.truth(), dataset.classes,
                                  interpolation=config.ap_interpolation)
        metrics = scores.summary()
        trainer.log_metrics({f"{test_split}/{name}": value for name, value in metrics.items()}, result.steps)
        return ProtocolResult(metrics={WHOLE_NETWORK: metrics}, details={
            "training": training_details(spec, result),
            "per_class": scores.per_class(),
            "positives": dict(zip(dataset.classes, scores.positives.tolist())),
            "evaluation": {"convention": CONVENTION if config.ap_interpolation == "voc07" else
                           CONVENTION.replace("VOC07 11-point AP at np.arange(0.0, 1.1, 0.1)", "all-point AP"),
                           "iou_thresholds": list(scores.thresholds), "detections": len(detections),
                           "comp4": "comp4_det_test_<class>.txt in the artifacts folder"},
            "model": {"head": config.head, "arch": ctx.backbone.arch, "norm": config.norm,
                      "freeze_at": STAGES[:config.freeze_at], "backend": "torchvision"},
            "annotations": {"clipped_files": clipped},
            "splits": {"train": train_split, "test": test_split},
        })
