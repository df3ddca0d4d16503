"""Colorization (Zhang, Isola, Efros 2016): predict the quantised ab colours of an image from its lightness, per pixel.

Input. The trunk sees the image's lightness only: the image in CIE Lab with
a = b = 0, turned back into sRGB (a grey RGB image with the original's L),
normalised as `run` normalises RGB. The trunk stays a standard RGB trunk; on a
grey image it sees exactly what it trained on.

Output. A decoder on res5 with a res4 skip predicts, at 1/16 of the input
resolution (stride-16 tap), logits over the in-gamut ab bins, upsampled
bilinearly to 1/target_stride of the input (the paper's 1/4); the targets are
the image's ab channels average-pooled to that resolution.

Bins. Centres of a grid_size grid in the ab plane that some 8-bit sRGB colour
falls into (nearest centre). The ab projection of the gamut is that of the RGB
cube's surface, so sampling the cube's six faces at 8 bits finds the same set
as all 2^24 colours: 261 bins for grid 10. Zhang et al. report 313; their set
reaches past the sRGB gamut and can't be derived from it, so we use the 261.

Loss. The paper's multinomial cross-entropy against soft-encoded targets (the
5 nearest bins, Gaussian sigma 5), each pixel weighted by the rebalancing
weight of its nearest bin, averaged over pixels (the paper sums). The weights
come from the prior: the distribution of nearest bins over an evenly spaced
sample of `prior_images` training images (resized and centre-cropped to the
training size), smoothed with a Gaussian (sigma 5) over the bins, estimated by
`on_epoch_start` before the first epoch and kept in buffers (saved with the
training state and with the heads).

Previews decode with the annealed mean (T = 0.38): `ColorizationModel.preview`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from benchmark.training import TrainSpec
from checkpoints.models import Backbone
from checkpoints.recipes.base import Recipe, RecipeConfig, RecipeModel

# Linear sRGB -> XYZ (IEC 61966-2-1, as Lindbloom tabulates it); its white (the row sums) is the D65 of sRGB,
# so white maps to L = 100 and greys to a = b = 0 exactly.
SRGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))
_DELTA = 6 / 29  # CIE: f(t) = t^(1/3) above DELTA^3, linear below


def _matrix(like: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    m = torch.tensor(SRGB_TO_XYZ, dtype=torch.float64)
    m = torch.linalg.inv(m) if inverse else m
    return m.to(device=like.device, dtype=like.dtype)


def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def rgb_to_lab(rgb: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """sRGB in [0, 1] (channels along `dim`) -> CIE Lab (L in [0, 100]), D65, in the input's float dtype."""
    m = _matrix(rgb)
    linear = srgb_to_linear(rgb).movedim(dim, -1)
    xyz = (linear @ m.T) / m.sum(1)  # relative to the white
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp_min(_DELTA ** 3) ** (1 / 3), xyz / (3 * _DELTA ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(-1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], -1).movedim(-1, dim)


def lab_to_rgb(lab: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """CIE Lab (channels along `dim`) -> sRGB, not clipped: colours outside the gamut leave [0, 1]."""
    m = _matrix(lab)
    lightness, a, b = lab.movedim(dim, -1).unbind(-1)
    fy = (lightness + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], -1)
    xyz = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4 / 29)) * m.sum(1)
    return linear_to_srgb(xyz @ _matrix(lab, inverse=True).T).movedim(-1, dim)


def lightness_only(rgb: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """The grey sRGB image with the same L: Lab with a = b = 0, back to sRGB."""
    lab = rgb_to_lab(rgb, dim)
    grey = torch.cat([lab.narrow(dim, 0, 1), torch.zeros_like(lab.narrow(dim, 1, 2))], dim)
    return lab_to_rgb(grey, dim).clamp(0, 1)


@functools.lru_cache(maxsize=8)
def _gamut_cells(grid_size: float) -> tuple[tuple[float, float], ...]:
    levels = torch.arange(256, dtype=torch.float64) / 255
    u, v = (t.reshape(-1) for t in torch.meshgrid(levels, levels, indexing="ij"))
    faces = []
    for axis in range(3):
        for value in (0.0, 1.0):
            columns = [u, v]
            columns.insert(axis, torch.full_like(u, value))
            faces.append(torch.stack(columns))
    ab = rgb_to_lab(torch.cat(faces, 1), dim=0)[1:].T
    cells = torch.unique(torch.round(ab / grid_size), dim=0)
    return tuple(map(tuple, (cells * grid_size).tolist()))


def ab_bins(grid_size: float = 10.0) -> torch.Tensor:
    """(Q, 2) float64 centres of the ab cells of a grid_size grid that 8-bit sRGB colours fall into (Q=261 at 10)."""
    return torch.tensor(_gamut_cells(float(grid_size)), dtype=torch.float64)


def nearest_bins(ab: torch.Tensor, centres: torch.Tensor, k: int = 1, chunk: int = 1 << 15
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances and indices of the k nearest centres of each ab point (P, 2), nearest first."""
    found = [torch.cdist(part, centres, compute_mode="donot_use_mm_for_euclid_dist").pow(2).topk(k, largest=False)
             for part in ab.split(chunk)]
    return torch.cat([f.values for f in found]), torch.cat([f.indices for f in found])


def soft_encode(ab: torch.Tensor, centres: torch.Tensor, neighbours: int = 5, sigma: float = 5.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Zhang et al.'s soft encoding: (indices, weights), each (P, neighbours); Gaussian weights summing to 1."""
    squared, indices = nearest_bins(ab, centres, neighbours)
    return indices, torch.softmax(-squared / (2 * sigma ** 2), dim=1)


def smoothed_prior(counts: torch.Tensor, centres: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """The empirical bin distribution, each bin's mass spread over the bins by a Gaussian of sigma (mass kept)."""
    kernel = torch.exp(-torch.cdist(centres, centres).pow(2) / (2 * sigma ** 2))
    kernel = kernel / kernel.sum(0, keepdim=True)
    return kernel @ (counts / counts.sum())


def rebalancing_weights(prior: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """w proportional to ((1 - lam) p + lam / Q)^-1, scaled so that sum_q p_q w_q = 1 (Zhang et al., eq. 4)."""
    weights = 1 / ((1 - lam) * prior + lam / len(prior))
    return weights / (prior * weights).sum()


def annealed_mean(logits: torch.Tensor, centres: torch.Tensor, temperature: float = 0.38, dim: int = 1
                  ) -> torch.Tensor:
    """ab from bin logits: the mean of the distribution re-normalised at temperature T (1: mean; -> 0: mode)."""
    probabilities = torch.softmax(logits.float() / temperature, dim=dim).movedim(dim, -1)
    return (probabilities @ centres.to(probabilities)).movedim(-1, dim)


@dataclasses.dataclass(frozen=True)
class ColorizationConfig(RecipeConfig):
    """Zhang et al.'s defaults: Adam lr 3e-5 at batch 40 (1.92e-4 per 256), betas (0.9, 0.99), wd 1e-3, 450k steps
    at batch 40 (14 ImageNet epochs), lr / sqrt(10) at 200k and 375k steps (4/9 and 5/6 of training)."""

    epochs: int = 14
    batch_size: int = 40
    optimizer: str = "adamw"  # the paper's Adam with L2 decay; here decoupled (AdamW)
    lr: float = 1.92e-4
    weight_decay: float = 1e-3
    schedule: str = "step"
    beta2: float = 0.99
    grid_size: float = 10.0  # ab quantisation grid (a coarser one gives fewer bins)
    neighbours: int = 5  # soft encoding: nearest bins per pixel
    sigma: float = 5.0  # soft encoding and prior smoothing
    rebalance: float = 0.5  # lambda: weight of the uniform distribution in the rebalancing mix
    target_stride: int = 4  # targets and logits at 1/target_stride of the input resolution
    decoder_width: int = 256
    prior_images: int = 2000  # training images the prior is estimated on (evenly spaced)
    preview_temperature: float = 0.38  # annealed-mean decoding of previews

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.grid_size <= 100 or not self.sigma > 0 or not 0 <= self.rebalance <= 1:
            raise ValueError("grid_size must be in (0, 100], sigma > 0 and rebalance in [0, 1]")
        if self.neighbours < 1 or self.target_stride < 1 or self.decoder_width < 1 or self.prior_images < 1:
            raise ValueError("neighbours, target_stride, decoder_width and prior_images must be >= 1")
        if not 0 < self.beta2 < 1 or not self.preview_temperature > 0:
            raise ValueError("beta2 must be in (0, 1) and preview_temperature > 0")
        if self.neighbours > len(_gamut_cells(float(self.grid_size))):
            raise ValueError(f"neighbours: {self.neighbours} is more than the {len(_gamut_cells(self.grid_size))} "
                             f"bins of grid_size {self.grid_size}")

    def train_spec(self, seed: int, sync_bn: bool = True) -> TrainSpec:
        """The base spec with Adam's beta2 and the paper's two lr drops by sqrt(10) (for the step schedule)."""
        spec = super().train_spec(seed, sync_bn)
        drops = {round(self.epochs * 4 / 9), round(self.epochs * 5 / 6)}
        optim = dataclasses.replace(spec.optim, betas=(0.9, self.beta2), gamma=10 ** -0.5)
        return dataclasses.replace(spec, optim=optim, milestone_epochs=tuple(sorted(m for m in drops
                                                                                    if 0 < m < self.epochs)))


def _conv_bn_relu(channels_in: int, channels_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(channels_out), nn.ReLU(inplace=True))


class ColorDecoder(nn.Module):
    """res5 (upsampled) + res4 -> two 3x3 convs -> bin logits at res4's resolution, then bilinear to `size`."""

    def __init__(self, res4_channels: int, res5_channels: int, width: int, bins: int) -> None:
        super().__init__()
        self.top = _conv_bn_relu(res5_channels, width, 1)
        self.skip = _conv_bn_relu(res4_channels, width, 1)
        self.fuse = nn.Sequential(_conv_bn_relu(width, width, 3), _conv_bn_relu(width, width, 3))
        self.classify = nn.Conv2d(width, bins, 1)

    def forward(self, res4: torch.Tensor, res5: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(self.top(res5), size=res4.shape[-2:], mode="nearest") + self.skip(res4)
        return F.interpolate(self.classify(self.fuse(x)), size=size, mode="bilinear", align_corners=False)


@dataclasses.dataclass
class PriorSource:
    """The training split and the transform (to RGB in [0, 1] at the training size) the prior is estimated on."""

    images: Any = None
    transform: Any = None


class ColorizationModel(RecipeModel):
    def __init__(self, trunk: Backbone, config: ColorizationConfig, source: PriorSource) -> None:
        super().__init__()
        self.trunk = trunk
        self.config = config
        self.source = source
        self._prior_ready = False
        centres = ab_bins(config.grid_size).float()
        self.register_buffer("centres", centres)
        self.register_buffer("prior", torch.full((len(centres),), 1 / len(centres)))
        self.register_buffer("weights", torch.ones(len(centres)))
        self.register_buffer("prior_sample", torch.zeros((), dtype=torch.long))  # its images (0: not estimated)
        self.decoder = ColorDecoder(trunk.tap("res4").channels, trunk.tap("res5").channels, config.decoder_width,
                                    len(centres))

    def logits(self, grey: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        taps = self.trunk.forward_taps(grey, ["res4", "res5"])
        return self.decoder(taps["res4"], taps["res5"], size)

    def target_ab(self, rgb: torch.Tensor) -> torch.Tensor:
        """ab of RGB images in [0, 1] (B, 3, H, W), average-pooled to the target resolution: (B, 2, h, w)."""
        ab = rgb_to_lab(rgb.float())[:, 1:]
        return F.adaptive_avg_pool2d(ab, self._target_size(rgb))

    def _target_size(self, images: torch.Tensor) -> tuple[int, int]:
        height, width = images.shape[-2:]
        return max(1, height // self.config.target_stride), max(1, width // self.config.target_stride)

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        grey, rgb = views
        if not self._prior_ready:  # checked once: reading the buffer syncs with the device
            if not int(self.prior_sample):
                raise RuntimeError("colorization: the colour prior is estimated in on_epoch_start(0); call it first")
            self._prior_ready = True
        logits = self.logits(grey, self._target_size(rgb))
        with torch.autocast(rgb.device.type, enabled=False):
            ab = self.target_ab(rgb).permute(0, 2, 3, 1).reshape(-1, 2)
            with torch.no_grad():
                indices, soft = soft_encode(ab, self.centres, self.config.neighbours, self.config.sigma)
            log_probabilities = F.log_softmax(logits.float(), dim=1).permute(0, 2, 3, 1).reshape(len(ab), -1)
            cross_entropy = -(soft * log_probabilities.gather(1, indices)).sum(1)
            return (self.weights[indices[:, 0]] * cross_entropy).mean()

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first epoch: estimate the prior on a sample of the training split (every process alike)."""
        if int(self.prior_sample):
            return
        images, transform = self.source.images, self.source.transform
        if images is None:
            raise RuntimeError("colorization: call the recipe's views() before training, it names the prior's images")
        count = min(self.config.prior_images, len(images))
        picks = torch.linspace(0, len(images) - 1, count).round().long().unique().tolist()
        counts = torch.zeros(len(self.centres), dtype=torch.float64, device=self.centres.device)
        with torch.no_grad():
            for start in range(0, len(picks), 64):
                rgb = torch.stack([transform(images[i][0]) for i in picks[start:start + 64]]).to(self.centres.device)
                ab = self.target_ab(rgb).permute(0, 2, 3, 1).reshape(-1, 2)
                counts += torch.bincount(nearest_bins(ab, self.centres)[1][:, 0], minlength=len(counts))
        prior = smoothed_prior(counts, self.centres.double(), self.config.sigma)
        self.prior.copy_(prior)
        self.weights.copy_(rebalancing_weights(prior, self.config.rebalance))
        self.prior_sample.fill_(len(picks))

    @torch.no_grad()
    def preview(self, grey: torch.Tensor, rgb: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Colourised RGB in [0, 1]: the L of `rgb` with the annealed-mean ab predicted from `grey` (views' pair)."""
        logits = self.logits(grey, self._target_size(rgb))
        ab = annealed_mean(logits, self.centres, temperature or self.config.preview_temperature)
        ab = F.interpolate(ab, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
        lab = torch.cat([rgb_to_lab(rgb.float())[:, :1], ab], 1)
        return lab_to_rgb(lab).clamp(0, 1)


class LightnessAndColour:
    """One PIL image -> (its lightness as a normalised grey RGB image, the RGB image in [0, 1]), same crop."""

    def __init__(self, crop: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.crop = crop
        self.normalize = transforms.Normalize(mean, std)

    def __call__(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = self.crop(image)
        return self.normalize(lightness_only(rgb)), rgb

    def __repr__(self) -> str:
        return f"LightnessAndColour({self.crop!r}, {self.normalize!r})"


@RECIPES.register("colorization")
class Colorization(Recipe):
    """Colorization: predict quantised ab colours from lightness, class-rebalanced (Zhang et al., ECCV 2016)."""

    name = "colorization"
    paper = "Zhang, Isola, Efros. Colorful Image Colorization. ECCV 2016"
    Config = ColorizationConfig

    def __init__(self) -> None:
        self.source = PriorSource()

    def build(self, trunk: Backbone, config: ColorizationConfig, dataset_size: int) -> ColorizationModel:
        return ColorizationModel(trunk, config, self.source)

    def views(self, config: ColorizationConfig, input_spec: InputSpec, dataset: Any) -> LightnessAndColour:
        """Random crops (45-100% of the area; the paper: 176 of 256 px) and flips, as (lightness, colour) pairs."""
        size = input_spec.size
        self.source.images = dataset.open_split(dataset.train_split, None)
        self.source.transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                                                    transforms.ToTensor()])
        crop = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.45, 1.0)),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor()])
        return LightnessAndColour(crop, input_spec.mean, input_spec.std)
