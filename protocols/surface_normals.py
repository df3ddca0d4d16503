"""NYUv2 surface-normal estimation (Goyal et al. 2019, PROTOCOLS.md surface_normals) on the training engine.

The checkpoint's ResNet trunk is dilated to output stride 8 (torchvision's
replace_stride_with_dilation applied to a copy: the stride-2 convolutions of
the stages that would go beyond stride 8 become stride 1, their 3x3 convs
dilated 2 then 4) and a pyramid-pooling head (PSPNet: bins 1, 2, 3, 6) reads
res5. Stages up to `freeze_at` (default res4) are frozen in eval mode; res5
and the head train. Targets: each valid ground-truth normal's nearest of
`clusters` k-means centres of the training normals (faiss, spherical, computed
once from a seeded sample and cached by dataset digest under the run's --cache
folder, or in the run's artifacts with --no-cache); per-pixel cross-entropy on
logits upsampled to the image; the prediction is the probability-weighted sum
of the centres, renormalised. `head=cosine` regresses unit normals directly (loss 1 - cos). SGD momentum 0.9,
weight decay 1e-4, lr 0.02 with poly decay (power 0.9). Training images are
seeded horizontal flips (normals' x negated) and, with `crop_size`, random crops.

Evaluation at every test image's own resolution (= its ground truth's):
protocols.normals_metrics pools all valid pixels (exact median in bounded
memory). Every process scores the whole test set (no sharding).
`save_predictions=true` writes predictions/<image id>.npy (float32 (H, W, 3)
unit vectors) into the run's artifacts folder beside the record.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.utils.data
from torch import nn
from torch.nn import functional as F

from benchmark import distributed
from benchmark.accel import worker_errors
from benchmark.config import check_split_fields, is_int
from benchmark.data.images import load_rgb
from benchmark.errors import SslBenchError
from benchmark.protocol import WHOLE_NETWORK, MetricSpec, Protocol, ProtocolResult, RunContext
from benchmark.registry import PROTOCOLS
from benchmark.results import atomic_write_bytes
from benchmark.training import OptimSpec, SeededAugmentation, TrainSpec
from protocols.classification import training_details
from protocols.normals_metrics import METRIC_NAMES, NormalErrors

STAGES = ("conv1", "res2", "res3", "res4", "res5")
STAGE_MODULES = {"conv1": ("conv1", "bn1"), "res2": ("layer1",), "res3": ("layer2",), "res4": ("layer3",),
                 "res5": ("layer4",)}
CODEBOOK_VERSION = "1"


@dataclasses.dataclass(frozen=True)
class SurfaceNormalsConfig:
    """Settings of the surface_normals protocol (PROTOCOLS.md; epochs and batch are ours, not the paper's)."""

    epochs: int = 30
    lr: float = 0.02  # for the whole batch, poly decay to 0
    batch_size: int = 16  # global
    freeze_at: str = "res4"  # frozen through this stage: none, conv1, res2, res3, res4, res5 (head only)
    clusters: int = 40
    head: Literal["classification", "cosine"] = "classification"
    save_predictions: bool = False
    weight_decay: float = 1e-4
    momentum: float = 0.9
    power: float = 0.9
    output_stride: int = 8
    head_channels: int = 512
    crop_size: int | None = None  # square random training crops; None: whole images (all of one size)
    codebook_samples: int = 200_000  # training normals sampled (seeded, spread over images) for k-means
    amp: str = "auto"
    save_every: int = 200
    train_split: str | None = None
    test_split: str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "clusters", "head_channels", "codebook_samples", "save_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if self.clusters < 2:
            raise ValueError(f"clusters: expected an integer >= 2, got {self.clusters!r}")
        if self.crop_size is not None and (not is_int(self.crop_size) or self.crop_size < 8):
            raise ValueError(f"crop_size: expected an integer >= 8 or None, got {self.crop_size!r}")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride: expected 8, 16 or 32, got {self.output_stride!r}")
        for name in ("lr", "power"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name}: expected a number > 0, got {value!r}")
        if not 0 <= self.weight_decay or not 0 <= self.momentum < 1:
            raise ValueError("weight_decay must be >= 0 and momentum in [0, 1)")
        if self.freeze_at not in ("none", *STAGES):
            raise ValueError(f"freeze_at: expected none, {', '.join(STAGES)}, got {self.freeze_at!r}")
        if self.head not in ("classification", "cosine"):
            raise ValueError(f"head: expected classification or cosine, got {self.head!r}")
        if not isinstance(self.save_predictions, bool):
            raise ValueError(f"save_predictions: expected true or false, got {self.save_predictions!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp: expected auto, bf16, fp16 or off, got {self.amp!r}")
        check_split_fields(self)


# ---------------------------------------------------------------- network

def check_resnet(trunk: nn.Module) -> None:
    if not all(hasattr(trunk, name) for names in STAGE_MODULES.values() for name in names):
        raise SslBenchError(f"surface_normals needs a ResNet trunk (conv1, layer1..layer4); architecture "
                            f"'{getattr(trunk, 'arch', type(trunk).__name__)}' has none; pick a ResNet checkpoint")


def dilate(trunk: nn.Module, output_stride: int) -> list[int]:
    """Dilate res3..res5 in place so res5 has stride `output_stride`; returns each stage's dilation.

    torchvision's replace_stride_with_dilation on built weights: a stage that would pass
    the output stride keeps stride 1; its first block's 3x3 convs take the previous
    dilation and the other blocks' the new one (so weights and padding stay aligned).
    """
    stride = trunk.tap("res2").stride
    dilation, dilations = 1, []
    for layer in (trunk.layer2, trunk.layer3, trunk.layer4):
        if stride * 2 <= output_stride:
            stride *= 2
            dilations.append(dilation)
            continue
        previous, dilation = dilation, dilation * 2
        for k, block in enumerate(layer):
            for module in block.modules():
                if isinstance(module, nn.Conv2d):
                    module.stride = (1, 1)
                    if module.kernel_size == (3, 3):
                        d = previous if k == 0 else dilation
                        module.dilation, module.padding = (d, d), (d, d)
        dilations.append(dilation)
    return dilations


class PyramidPooling(nn.Module):
    """PSPNet's head: the map plus its average pools at bins (1, 2, 3, 6), each 1x1-conv'd to C/4 and
    upsampled, concatenated; 3x3 conv + BN + ReLU, dropout 0.1, 1x1 conv to `out` channels.

    The pooled branches have a bias and no BatchNorm (a 1x1 pool of one image has no batch statistics).
    """

    def __init__(self, channels: int, out: int, width: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        branch = max(channels // len(bins), 1)
        self.bins = bins
        self.branches = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, branch, 1), nn.ReLU(inplace=True))
                                      for _ in bins)
        self.fuse = nn.Sequential(nn.Conv2d(channels + branch * len(bins), width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.Dropout2d(0.1))
        self.classifier = nn.Conv2d(width, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(branch(F.adaptive_avg_pool2d(x, b)), size=size, mode="bilinear", align_corners=False)
                  for b, branch in zip(self.bins, self.branches)]
        return self.classifier(self.fuse(torch.cat([x, *pooled], 1)))


class NormalsNet(nn.Module):
    """Dilated trunk (stages up to freeze_at frozen, in eval mode) + pyramid-pooling head on res5.

    forward(images) -> logits (B, K, h, w) at the output stride; K = clusters, or 3 for the cosine head.
    """

    def __init__(self, trunk: nn.Module, freeze_at: str, out: int, width: int) -> None:
        super().__init__()
        self.trunk = trunk
        frozen = STAGES[:STAGES.index(freeze_at) + 1] if freeze_at != "none" else ()
        self.frozen = [getattr(trunk, name) for stage in frozen for name in STAGE_MODULES[stage]]
        trunk.requires_grad_(True)
        for module in self.frozen:
            module.requires_grad_(False)
        self.head = PyramidPooling(trunk.tap("res5").channels, out, width)

    def train(self, mode: bool = True) -> NormalsNet:
        super().train(mode)
        for module in self.frozen:
            module.eval()  # frozen stages keep their BatchNorm statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk.forward_taps(x, ["res5"])["res5"].float())


def predict_normals(out: torch.Tensor, size: tuple[int, int], centres: torch.Tensor | None) -> torch.Tensor:
    """Unit normals (B, 3, H, W) at `size` from head outputs: the probability-weighted sum of the centres
    (classification), or the regressed vectors (cosine, centres None), renormalised."""
    out = F.interpolate(out.float(), size=size, mode="bilinear", align_corners=False)
    if centres is not None:
        out = torch.einsum("bkhw,kc->bchw", out.softmax(1), centres)
    return F.normalize(out, dim=1, eps=1e-12)


def normals_loss(out: torch.Tensor, normals: torch.Tensor, mask: torch.Tensor,
                 centres: torch.Tensor | None) -> torch.Tensor:
    """Per-pixel 40-way cross-entropy against the nearest centre (or 1 - cos), over valid pixels."""
    size = normals.shape[-2:]
    if not mask.any():
        return out.sum() * 0.0
    if centres is None:
        cosine = (predict_normals(out, size, None) * normals).sum(1)
        return (1 - cosine)[mask].mean()
    target = torch.einsum("bchw,kc->bkhw", normals, centres).argmax(1)
    target = target.masked_fill(~mask, -100)
    logits = F.interpolate(out.float(), size=size, mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, target, ignore_index=-100)


# ---------------------------------------------------------------- data

class NormalsPairs(torch.utils.data.Dataset):
    """Item i is ((RGB image, normals (H, W, 3), mask (H, W)), i) of one split."""

    def __init__(self, dataset: Any, split: str) -> None:
        self.dataset, self.split = dataset, split
        self.paths = dataset.paths(split, "images")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[tuple[Any, np.ndarray, np.ndarray], int]:
        image = load_rgb(self.paths[index])
        normals, mask = self.dataset.targets(self.split, index)
        if image.size != (normals.shape[1], normals.shape[0]):
            raise SslBenchError(f"image {self.paths[index]} is {image.size[0]}x{image.size[1]} but its normals are "
                                f"{normals.shape[1]}x{normals.shape[0]}; they must match")
        return (image, normals, mask), index


class JointAugment:
    """Image, normals and mask together: a seeded random crop (when crop_size is set) and horizontal flip
    (mirroring negates the normals' x, which points right); the image normalised with mean/std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], crop_size: int | None,
                 flip: bool = True) -> None:
        self.mean, self.std, self.crop_size, self.flip = mean, std, crop_size, flip

    def __call__(self, sample: tuple[Any, np.ndarray, np.ndarray]) -> tuple[torch.Tensor, ...]:
        from torchvision.transforms import functional as TF
        image, normals, mask = sample
        image = TF.normalize(TF.to_tensor(image), self.mean, self.std)
        normals = torch.from_numpy(np.ascontiguousarray(normals)).permute(2, 0, 1)
        mask = torch.from_numpy(np.ascontiguousarray(mask))
        if self.crop_size is not None:
            h, w = mask.shape
            if self.crop_size > min(h, w):
                raise SslBenchError(f"crop_size {self.crop_size} is larger than a {w}x{h} training image; "
                                    "lower crop_size")
            top = int(torch.randint(0, h - self.crop_size + 1, ()))
            left = int(torch.randint(0, w - self.crop_size + 1, ()))
            window = (slice(top, top + self.crop_size), slice(left, left + self.crop_size))
            image, normals, mask = image[(..., *window)], normals[(..., *window)], mask[window]
        if self.flip and bool(torch.rand(()) < 0.5):
            image, normals, mask = image.flip(-1), normals.flip(-1).clone(), mask.flip(-1)
            normals[0] = -normals[0]
        return image.contiguous(), normals.contiguous(), mask.contiguous()


# ---------------------------------------------------------------- codebook

def codebook_path(ctx: RunContext, split: str, config: SurfaceNormalsConfig) -> Path:
    """Under the run's --cache folder; with --no-cache in the run's own artifacts (kept for its resume only)."""
    key = (f"{ctx.dataset.name}-{ctx.dataset.digest()[:16]}-{split}-k{config.clusters}-"
           f"n{config.codebook_samples}-s{ctx.seed}-v{CODEBOOK_VERSION}")
    folder = ctx.cache_dir if ctx.cache_dir is not None else ctx.artifacts
    assert folder is not None, "a RunContext without cache_dir needs artifacts"
    return Path(folder) / "normals_codebook" / f"{key}.npy"


def compute_codebook(dataset: Any, split: str, clusters: int, samples: int, seed: int) -> np.ndarray:
    """float32 (clusters, 3) unit centres: spherical faiss k-means on a seeded sample of valid training normals
    (the same number from each image)."""
    import faiss
    n_images = len(dataset.ids(split))
    per_image = math.ceil(samples / n_images)
    drawn = []
    for i in range(n_images):
        normals, mask = dataset.targets(split, i)
        valid = normals[mask]
        rng = np.random.default_rng([seed, i])
        drawn.append(valid[rng.choice(len(valid), size=min(per_image, len(valid)), replace=False)])
    points = np.ascontiguousarray(np.concatenate(drawn), dtype=np.float32)
    if len(points) < clusters:
        raise SslBenchError(f"split '{split}' has {len(points)} valid normals, fewer than clusters={clusters}; "
                            "lower clusters or use more images")
    kmeans = faiss.Kmeans(3, clusters, niter=25, seed=seed, spherical=True, verbose=False,
                          max_points_per_centroid=max(256, math.ceil(len(points) / clusters)))
    kmeans.train(points)
    centres = kmeans.centroids.astype(np.float64)
    return (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)


def cached_codebook(ctx: RunContext, split: str, config: SurfaceNormalsConfig) -> tuple[np.ndarray, Path]:
    """The codebook from the cache, computed (on rank 0) and stored when absent."""
    path = codebook_path(ctx, split, config)
    if distributed.is_main_process() and not path.is_file():
        ctx.log(f"k-means of {config.clusters} normal clusters on split '{split}' (cached at {path})")
        centres = compute_codebook(ctx.dataset, split, config.clusters, config.codebook_samples, ctx.seed)
        import io
        buffer = io.BytesIO()
        np.save(buffer, centres)
        atomic_write_bytes(path, buffer.getvalue())
    distributed.barrier()
    centres = np.load(path)
    if centres.shape != (config.clusters, 3):
        raise SslBenchError(f"cached codebook {path} holds {centres.shape}, not ({config.clusters}, 3); delete it")
    return centres, path


# ---------------------------------------------------------------- protocol

@PROTOCOLS.register("surface_normals")
class SurfaceNormalsProtocol(Protocol):
    """NYUv2 surface normals: dilated ResNet + pyramid pooling, 40 normal clusters; angular errors on test."""

    name = "surface_normals"
    version = "1"
    Config = SurfaceNormalsConfig
    default_dataset = "nyuv2"
    needs = ("normals",)
    per_tap = False

    def metrics(self, config: SurfaceNormalsConfig, dataset: Any) -> tuple[MetricSpec, ...]:
        return (MetricSpec("median", higher_is_better=False, primary=True),
                MetricSpec("mean", higher_is_better=False),
                *(MetricSpec(name) for name in METRIC_NAMES if name.startswith("within_")))

    def run(self, ctx: RunContext, config: SurfaceNormalsConfig) -> ProtocolResult:
        dataset = ctx.dataset
        train_split = config.train_split or dataset.train_split
        test_split = config.test_split or dataset.test_split
        train_sizes = dataset.check_split_files(train_split)
        test_sizes = dataset.check_split_files(test_split)
        if config.crop_size is None and len(set(train_sizes)) > 1:
            raise SslBenchError(f"training images of split '{train_split}' differ in size; "
                                "set --set crop_size=N to train on square crops")
        trunk = ctx.trunk_copy()
        check_resnet(trunk)
        dilations = dilate(trunk, config.output_stride)
        classify = config.head == "classification"
        centres_np, codebook_file = cached_codebook(ctx, train_split, config) if classify else (None, None)
        centres = torch.from_numpy(centres_np).to(ctx.device) if classify else None
        model = NormalsNet(trunk, config.freeze_at, config.clusters if classify else 3, config.head_channels)
        optim = OptimSpec(name="sgd", lr=config.lr, momentum=config.momentum, nesterov=False,
                          weight_decay=config.weight_decay, no_decay_norm_and_bias=False, schedule="poly",
                          power=config.power)
        batch = min(config.batch_size, len(train_sizes))
        spec = TrainSpec(optim=optim, batch_size=batch, epochs=config.epochs, amp=config.amp,
                         save_every=config.save_every, seed=ctx.seed)
        trainer = ctx.trainer(model, spec)
        data = SeededAugmentation(NormalsPairs(dataset, train_split),
                                  JointAugment(ctx.input.mean, ctx.input.std, config.crop_size), seed=ctx.seed)

        def step(net: nn.Module, batch: Any) -> torch.Tensor:
            (images, normals, mask), _ = batch
            return normals_loss(net(images), normals.float(), mask, centres)

        result = trainer.fit(data, step)
        predictions = ctx.artifacts / "predictions" if config.save_predictions else None
        metrics = self.evaluate(ctx, trainer, test_split, centres, len(set(test_sizes)) == 1, config, predictions)
        trainer.log_metrics({f"{test_split}/{name}": value for name, value in metrics.items()}, result.steps)
        return ProtocolResult(metrics={WHOLE_NETWORK: metrics}, details={
            "training": training_details(spec, result, output_stride=config.output_stride, dilations=dilations,
                                         frozen=config.freeze_at),
            "codebook": None if codebook_file is None else {"file": codebook_file.name,
                                                            "centres": centres_np.round(6).tolist()},
            "splits": {"train": train_split, "test": test_split},
            "evaluation": {"pixels": "all valid test pixels pooled", "median": "exact (selection)",
                           "resolution": "each image's own (= its ground truth's)"},
            "predictions": None if predictions is None else predictions.name,
        })

    @torch.no_grad()
    def evaluate(self, ctx: RunContext, trainer: Any, split: str, centres: torch.Tensor | None, batched: bool,
                 config: SurfaceNormalsConfig, predictions: Path | None) -> dict[str, float]:
        """Predict every test image at its own resolution and score all valid pixels pooled."""
        from torchvision import transforms
        dataset, model, ids = ctx.dataset, trainer.model, ctx.dataset.ids(split)
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(ctx.input.mean, ctx.input.std)])
        loader = torch.utils.data.DataLoader(dataset.open_split(split, transform),
                                             batch_size=config.batch_size if batched else 1, shuffle=False,
                                             num_workers=ctx.workers, pin_memory=ctx.device.type == "cuda")
        if predictions is not None:
            predictions.mkdir(parents=True, exist_ok=True)
        was_training = model.training
        model.eval()
        try:
            with NormalErrors(folder=ctx.artifacts) as errors, worker_errors():
                for images, index in ctx.progress(loader, desc=f"evaluate {split}", total=len(loader)):
                    images = trainer.policy.prepare_input(images, ctx.device)
                    with trainer.policy.autocast():
                        out = model(images)
                    normals = predict_normals(out, images.shape[-2:], centres).permute(0, 2, 3, 1).cpu().numpy()
                    for pred, i in zip(normals, index.tolist()):
                        gt, mask = dataset.targets(split, i)
                        errors.add(pred, gt, mask, what=f"prediction of image '{ids[i]}'")
                        if predictions is not None and distributed.is_main_process():
                            np.save(predictions / f"{ids[i]}.npy", pred.astype(np.float32))
                return errors.result()
        finally:
            model.train(was_training)
