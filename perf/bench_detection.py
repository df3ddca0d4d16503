"""Detection on the CPU: training iterations/s of R50-C4 and R50-FPN through the engine, the ratio of our FPN
to a bare torchvision fasterrcnn_resnet50_fpn training step on the same batch, and scoring VOC07-test-sized
detections.

    python perf/bench_detection.py [--size 128] [--batch-size 2] [--steps 4] [--rois 64]

Prints one `name=value (target ...)` line per figure. Both sides of the ratio
train the same architecture (ResNet-50 FPN, frozen BN, stem and res2 frozen as
torchvision's default trainable_backbone_layers=3), on the same batch, the same
RoI and proposal counts, in this process, alternating, best of `--repeats`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils.data

from benchmark.training import OptimSpec, Trainer, TrainSpec
from checkpoints.models import build_seeded
from protocols.detection import DetectionConfig, build_detector, collate, detection_step, freeze_batchnorm
from protocols.voc_detection_eval import Detections, GroundTruth, score_detections

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class FixedBatch(torch.utils.data.Dataset):
    """The same pre-sized images and targets every epoch; item i is (i, image, target)."""

    def __init__(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, dict[str, torch.Tensor]]:
        return index, self.images[index], self.targets[index]


def make_batch(n: int, size: int) -> FixedBatch:
    rng = np.random.default_rng(0)
    images, targets = [], []
    for _ in range(n):
        images.append(torch.from_numpy(rng.random((3, size, size + size // 4), dtype=np.float32)))
        xy = rng.uniform(0, size / 2, (3, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(16, size / 2, (3, 2))], axis=1)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.tensor(rng.integers(1, 21, 3))})
    return FixedBatch(images, targets)


def config_for(head: str, args: argparse.Namespace) -> DetectionConfig:
    return DetectionConfig(head=head, norm="frozen", freeze_at=2, min_size=(args.size,), test_size=args.size,
                           rois_per_image=args.rois, rpn_post_nms_train=args.proposals,
                           rpn_pre_nms_train=args.proposals)


def ours_seconds(head: str, data: FixedBatch, args: argparse.Namespace) -> float:
    """Seconds per iteration of our detector through the training engine (loader, collate, step, schedule)."""
    model = build_detector(build_seeded("resnet50", seed=0), config_for(head, args), 20, MEAN, STD)
    spec = TrainSpec(optim=OptimSpec(lr=1e-5, nesterov=False, weight_decay=1e-4), batch_size=args.batch_size,
                     max_steps=args.steps + 1, save_every=10**6, log_every=10**6)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, spec, torch.device("cpu"), Path(run_dir), {})
        timed = []

        def step(model: torch.nn.Module, batch: tuple) -> tuple:
            timed.append(time.perf_counter())
            return detection_step(model, batch)

        trainer.fit(data, step, collate_fn=collate)
    return (timed[-1] - timed[0]) / (len(timed) - 1)  # the first step is warm-up


def bare_seconds(data: FixedBatch, args: argparse.Namespace) -> float:
    """Seconds per iteration of a plain loop over torchvision's fasterrcnn_resnet50_fpn on the same batch."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=21,
                                    min_size=args.size, max_size=1333, image_mean=list(MEAN), image_std=list(STD),
                                    box_batch_size_per_image=args.rois, rpn_post_nms_top_n_train=args.proposals,
                                    rpn_pre_nms_top_n_train=args.proposals).train()
    body = model.backbone.body  # without pretrained weights torchvision trains every layer with plain BN: match ours
    freeze_batchnorm(body)
    for name in ("conv1", "layer1"):
        getattr(body, name).requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9,
                                weight_decay=1e-4)
    images = data.images[:args.batch_size]
    targets = data.targets[:args.batch_size]
    stamps = []
    for _ in range(args.steps + 1):
        stamps.append(time.perf_counter())
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[1]) / args.steps


def scoring_seconds() -> float:
    """Seconds to score 4952 images with 100 detections each (20 classes, 1-5 objects per image)."""
    rng = np.random.default_rng(0)
    n = 4952
    boxes, labels, difficult = [], [], []
    for _ in range(n):
        m = int(rng.integers(1, 6))
        xy = rng.uniform(1, 300, (m, 2))
        boxes.append(np.concatenate([xy, xy + rng.uniform(10, 200, (m, 2))], axis=1))
        labels.append(rng.integers(0, 20, m))
        difficult.append(rng.random(m) < 0.1)
    image = np.repeat(np.arange(n), 100)
    xy = rng.uniform(1, 300, (len(image), 2))
    detections = Detections(image, rng.integers(0, 20, len(image)), rng.random(len(image)),
                            np.concatenate([xy, xy + rng.uniform(10, 200, xy.shape)], axis=1))
    started = time.perf_counter()
    score_detections(detections, GroundTruth(boxes, labels, difficult), [f"c{k}" for k in range(20)])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rois", type=int, default=64, help="RoIs sampled per training image")
    parser.add_argument("--proposals", type=int, default=256, help="RPN proposals kept per training image")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-c4", action="store_true")
    args = parser.parse_args()
    data = make_batch(args.batch_size, args.size)
    if not args.skip_c4:
        c4 = min(ours_seconds("c4", data, args) for _ in range(args.repeats))
        print(f"r50_c4_train_it_per_s={1 / c4:.3f} (size {args.size}, batch {args.batch_size}, "
              f"{args.rois} RoIs/image)")
    fpn, bare = [], []
    for _ in range(args.repeats):  # alternate, so load on the machine hits both sides alike
        fpn.append(ours_seconds("fpn", data, args))
        bare.append(bare_seconds(data, args))
    print(f"r50_fpn_train_it_per_s={1 / min(fpn):.3f}")
    print(f"bare_torchvision_fpn_it_per_s={1 / min(bare):.3f}")
    print(f"fpn_speed_ratio_vs_bare={min(bare) / min(fpn):.3f} (target >= 0.9)")
    print(f"score_4952_images_s={scoring_seconds():.2f} (target < 10)")


if __name__ == "__main__":
    main()
