"""Context encoder (Pathak et al. 2016): reconstruct a masked region of the image from its context.

Each view is (image, mask): the mask (1 where the image is dropped) is the
centre square (`mask=center`, side `mask_size` of the image side; the paper:
64 of 128 px) or square blocks at random places until they cover `mask_area`
of the image (`mask=random_blocks`, sides up to `block_size` of the image
side; the paper's random-block variant covers up to 1/4). The trunk encodes
the image with the masked pixels set to the dataset mean (0 after
normalisation); a decoder of 4x4 stride-2 transposed convs (BN, ReLU) brings
res5 back to the input resolution, and the loss is the mean squared error over
the masked pixels, in normalised pixel units: the paper's
||M * (x - F((1 - M) * x))||^2 (its decoder outputs the whole image there too).

With `overlap` > 0 the prediction also covers a band of that many pixels
around the mask (in the context the encoder sees), weighted `overlap_weight`
(the paper's code: 4 px at 128 px, weight 10, the erased centre then 56 px);
the loss is then the weighted squared error averaged over mask and band.
Off by default, so the loss reads masked pixels only.

With `adversarial=true` (off by default, as in the paper's feature-learning
runs) a small DCGAN-style discriminator judges the reconstructed region (the
bounding box of the batch's masks: the centre square, or most of the image for
random blocks) against the real one, and the loss is the paper's joint
lambda_rec * L_rec + lambda_adv * L_adv (0.999 / 0.001), L_adv the
non-saturating generator loss -log D(fake). The discriminator is a head of
the model, trained in the same step on its own loss
-log D(real) - log(1 - D(fake)) (fake detached, so it never moves the
generator; the generator's term reads the discriminator through detached
weights, so it never moves the discriminator): one optimiser updating both
at once instead of the paper's alternating D-then-G updates.

Not implemented: the channel-wise fully connected layer between AlexNet's pool5
and the decoder, which spreads information over the whole map; a ResNet's res5
already sees the whole image.
"""

from __future__ import annotations

import dataclasses
import math
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

MASKS = ("center", "random_blocks")


@dataclasses.dataclass(frozen=True)
class ContextEncoderConfig(RecipeConfig):
    """Pathak et al.'s reference code: Adam lr 2e-4 at batch 64 (8e-4 per 256), betas (0.5, 0.999), no weight decay,
    constant lr; a centre mask of half the image side."""

    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 8e-4
    weight_decay: float = 0.0
    schedule: str = "constant"
    beta1: float = 0.5
    mask: str = "center"  # center or random_blocks
    mask_size: float = 0.5  # center: side of the masked square, a fraction of the image side
    mask_area: float = 0.25  # random_blocks: fraction of the image the blocks cover (at least)
    block_size: float = 0.25  # random_blocks: largest block side, a fraction of the image side (smallest: half)
    overlap: int = 0  # pixels of context around the mask that are predicted too (the paper's code: 4 at 128 px)
    overlap_weight: float = 10.0  # loss weight of that band
    decoder_width: int = 512  # channels of the first transposed conv, halved by each next one (at least 32)
    adversarial: bool = False  # the paper's adversarial term (a discriminator on the reconstructed region)
    lambda_rec: float = 0.999  # weight of the reconstruction loss when adversarial
    lambda_adv: float = 0.001  # weight of the generator's adversarial loss
    discriminator_width: int = 64  # channels of the discriminator's first conv, doubled by each next one

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lambda_rec >= 0 or not self.lambda_adv >= 0 or self.discriminator_width < 1:
            raise ValueError("lambda_rec and lambda_adv must be >= 0 and discriminator_width >= 1")
        if self.mask not in MASKS:
            raise ValueError(f"mask: expected one of {', '.join(MASKS)}, got {self.mask!r}")
        if not 0 < self.mask_size < 1 or not 0 < self.mask_area < 1 or not 0 < self.block_size < 1:
            raise ValueError("mask_size, mask_area and block_size must be fractions in (0, 1)")
        if self.overlap < 0 or not self.overlap_weight > 0 or self.decoder_width < 1 or not 0 <= self.beta1 < 1:
            raise ValueError("overlap must be >= 0, overlap_weight > 0, decoder_width >= 1 and beta1 in [0, 1)")

    def train_spec(self, seed: int, sync_bn: bool = True) -> TrainSpec:
        """The base spec with Adam's beta1 of the paper (0.5)."""
        spec = super().train_spec(seed, sync_bn)
        return dataclasses.replace(spec, optim=dataclasses.replace(spec.optim, betas=(self.beta1, 0.999)))


def center_mask(size: int, fraction: float) -> torch.Tensor:
    """(1, size, size) float mask, 1 on the centred square of side round(size * fraction)."""
    side = max(1, round(size * fraction))
    start = (size - side) // 2
    mask = torch.zeros(1, size, size)
    mask[:, start:start + side, start:start + side] = 1
    return mask


def random_block_mask(size: int, area: float, block: float) -> torch.Tensor:
    """(1, size, size) float mask: squares (side in [block/2, block] of the image side) until `area` is covered."""
    largest = max(1, round(size * block))
    smallest = max(1, largest // 2)
    mask = torch.zeros(1, size, size)
    while float(mask.mean()) < area:
        side = int(torch.randint(smallest, largest + 1, ()))
        top, left = (int(v) for v in torch.randint(0, size - side + 1, (2,)))
        mask[:, top:top + side, left:left + side] = 1
    return mask


def masked_input(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The encoder's input: masked pixels set to 0, the dataset mean after normalisation."""
    return image * (1 - mask)


def reconstruction_loss(prediction: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, overlap: int = 0,
                        overlap_weight: float = 10.0) -> torch.Tensor:
    """Weighted mean squared error over the masked pixels (weight 1) and the `overlap` band around them."""
    mask = mask.float()
    weight = mask
    if overlap:
        grown = F.max_pool2d(mask, 2 * overlap + 1, stride=1, padding=overlap)
        weight = mask + overlap_weight * (grown - mask)
    squared = (prediction.float() - image.float()).pow(2) * weight
    predicted = (weight > 0).sum() * image.shape[1]
    return squared.sum() / predicted.clamp_min(1)


class InpaintingDecoder(nn.Module):
    """res5 -> log2(stride) transposed convs (4x4, stride 2, BN, ReLU) -> 3x3 conv to RGB at the input size."""

    def __init__(self, channels: int, stride: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(round(math.log2(stride))):
            out = max(width >> i, 32)
            layers += [nn.ConvTranspose2d(channels, out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            channels = out
        layers.append(nn.Conv2d(channels, 3, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, res5: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = self.layers(res5)
        if out.shape[-2:] != size:  # an input side that is not a multiple of the stride
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out


class Discriminator(nn.Module):
    """DCGAN-style: 4x4 stride-2 convs (LeakyReLU 0.2, BN after the first), a 1-channel conv, spatial mean -> logit."""

    def __init__(self, width: int, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i in range(depth):
            out = width << i
            layers.append(nn.Conv2d(channels, out, 4, stride=2, padding=1, bias=i == 0))
            if i:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            channels = out
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, region: torch.Tensor) -> torch.Tensor:
        return self.layers(region).mean(dim=(1, 2, 3))


def masked_region(images: torch.Tensor, mask: torch.Tensor, least: int = 8) -> torch.Tensor:
    """The images inside the bounding box of every mask in the batch (B, 1, H, W), resized up to `least` px a side."""
    rows = mask.amax(dim=(0, 1, 3)).nonzero()
    cols = mask.amax(dim=(0, 1, 2)).nonzero()
    region = images[..., int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]
    if min(region.shape[-2:]) < least:
        size = tuple(max(side, least) for side in region.shape[-2:])
        region = F.interpolate(region, size=size, mode="bilinear", align_corners=False)
    return region


def adversarial_losses(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       fake_logits_fixed_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(discriminator loss -log D(real) - log(1 - D(fake)), generator loss -log D(fake)), batch means."""
    real_logits, fake_logits, fixed = real_logits.float(), fake_logits.float(), fake_logits_fixed_d.float()
    disc = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    return disc, F.binary_cross_entropy_with_logits(fixed, torch.ones_like(fixed))


class ContextEncoderModel(RecipeModel):
    def __init__(self, trunk: Backbone, config: ContextEncoderConfig) -> None:
        super().__init__()
        self.trunk = trunk
        self.config = config
        self.decoder = InpaintingDecoder(trunk.tap("res5").channels, trunk.tap("res5").stride, config.decoder_width)
        self.discriminator = Discriminator(config.discriminator_width) if config.adversarial else None

    def reconstruct(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        res5 = self.trunk.forward_taps(masked_input(image, mask), ["res5"])["res5"]
        return self.decoder(res5, image.shape[-2:])

    def forward(self, views: tuple[torch.Tensor, torch.Tensor],
                index: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, mask = views
        prediction = self.reconstruct(image, mask)
        rec = reconstruction_loss(prediction, image, mask, self.config.overlap, self.config.overlap_weight)
        if self.discriminator is None:
            return rec
        fake = masked_region(prediction * mask + image * (1 - mask), mask)
        real = masked_region(image, mask)
        fixed = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        disc, gen = adversarial_losses(self.discriminator(real), self.discriminator(fake.detach()),
                                       torch.func.functional_call(self.discriminator, fixed, (fake,)))
        loss = self.config.lambda_rec * rec + self.config.lambda_adv * gen + disc
        return loss, {"reconstruction": rec.detach(), "generator": gen.detach(), "discriminator": disc.detach()}


class ImageAndMask:
    """One PIL image -> (normalised crop, its mask (1, H, W)); random masks draw from the seeded augmentation RNG."""

    def __init__(self, crop: Any, config: ContextEncoderConfig, size: int) -> None:
        self.crop = crop
        self.config = config
        self.size = size
        self.fixed = center_mask(size, config.mask_size) if config.mask == "center" else None

    def __call__(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.crop(image)
        if self.fixed is not None:
            return image, self.fixed.clone()
        return image, random_block_mask(self.size, self.config.mask_area, self.config.block_size)

    def __repr__(self) -> str:
        return f"ImageAndMask({self.crop!r}, mask={self.config.mask})"


@RECIPES.register("context_encoder")
class ContextEncoder(Recipe):
    """Context encoder: inpaint a masked region from its context, L2 loss (Pathak et al., CVPR 2016)."""

    name = "context_encoder"
    paper = ("Pathak, Krahenbuhl, Donahue, Darrell, Efros. Context Encoders: Feature Learning by Inpainting. "
             "CVPR 2016")
    Config = ContextEncoderConfig

    def build(self, trunk: Backbone, config: ContextEncoderConfig, dataset_size: int) -> ContextEncoderModel:
        return ContextEncoderModel(trunk, config)

    def views(self, config: ContextEncoderConfig, input_spec: InputSpec, dataset: Any) -> ImageAndMask:
        """Random crops (13-100% of the area; the paper: 128 of 350 px) and flips, with the mask."""
        crop = transforms.Compose([transforms.RandomResizedCrop(input_spec.size, scale=(0.13, 1.0)),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                   transforms.Normalize(input_spec.mean, input_spec.std)])
        return ImageAndMask(crop, config, input_spec.size)
