"""CPC (van den Oord et al. 2018; Hénaff et al. 2020): predict the latents of patches further down the image.

Each image becomes an overlapping grid of patches (7x7 patches of 64 px at a
stride of 32 px on a 256 px image in the papers; the same proportions at the
run's input size: 8 px patches at a stride of 4 on a 32 px image). The trunk
encodes every patch on its own into z (res5avg); a PixelCNN-style context
network reads the grid of z top to bottom into c; a linear map per offset k
turns c at row r into a prediction of (a linear projection of) z at row r + k,
scored by InfoNCE against every patch of the global batch.

Causality: c at row r is a function of the z of rows r - L .. r only (L the
number of context blocks; columns within L of its own), so the prediction of
row r + k (k >= 1) never sees the grid row it predicts. In pixels the patches
overlap by half, so for k = 1 the context's own patch covers half of the
target's pixels; CPC v2's appendix code predicts only k = 3 for that reason
(min_offset = max_offset = 3 here).

The trunk keeps the run's architecture and its BatchNorm (CPC v2 swaps it for
LayerNorm, which would change the trunk the checkpoint holds); BN statistics
stay per process (sync_bn off), the closest the trunk can come to v2's
per-patch normalisation. ResNet trunks take any patch size: their stride-2
convolutions pad, so an 8 px patch still reaches a 1x1 res5 map (ImageNet
stem: 4, 2, 2, 1, 1, 1 px after conv1, the max-pool and res2..res5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

from benchmark.distributed import all_gather_with_grad, get_rank
from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from checkpoints.models import Backbone
from checkpoints.recipes.augment import Views
from checkpoints.recipes.base import Recipe, RecipeConfig, RecipeModel, feature_dim, pooled

REFERENCE_SIZE = 256  # the image side at which patch_size and patch_stride are given
RESIZE = 300 / 256  # CPC v1: 256 px crops of images resized to 300 px
JITTER = 60 / 64  # CPC v1: a random 60 px sub-crop of each 64 px patch, padded back
TURNS = (0, 2, 1, 3)  # quarter turns of the grid per direction: top-down, bottom-up, then the two across


@dataclasses.dataclass(frozen=True)
class CpcConfig(RecipeConfig):
    """CPC's settings: v1's optimiser and grid, v2's context network, InfoNCE head and patch augmentation."""

    batch_size: int = 512  # CPC v1: 32 GPUs x 16 images
    optimizer: str = "adamw"  # Adam (weight_decay 0)
    lr: float = 1e-4  # per 256 images: Adam at 2e-4 with 512 images in CPC v1
    weight_decay: float = 0.0
    schedule: str = "constant"
    grid: int = 7  # patches per side
    patch_size: int = 64  # px on a REFERENCE_SIZE image; scaled to the run's input size
    patch_stride: int = 32  # px on a REFERENCE_SIZE image
    min_offset: int = 1  # predict the rows k = min_offset .. max_offset below the context's row
    max_offset: int = 5  # CPC v1: up to five rows of the 7x7 grid
    directions: int = 2  # 1: top-down (v1); 2: and bottom-up (v2); 4: and both across
    target_dim: int = 64  # z is projected to this many dims before scoring (v2's appendix)
    emb_scale: float = 0.1  # predictions are scaled by it (v2's appendix)
    context_dim: int = 256  # bottleneck width of a context block (v2's appendix)
    context_blocks: int = 5  # residual masked blocks (v2's appendix)
    patch_augment: bool = True  # per patch: spatial jitter (v1), horizontal flip and colour dropping (v2)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("grid", "patch_size", "patch_stride", "target_dim", "context_dim", "context_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if self.grid < 2:
            raise ValueError(f"grid: expected at least 2 patches per side, got {self.grid}")
        if not 1 <= self.min_offset <= self.max_offset <= self.grid - 1:
            raise ValueError(f"min_offset and max_offset: expected 1 <= min_offset <= max_offset <= grid - 1 = "
                             f"{self.grid - 1}, got {self.min_offset} and {self.max_offset}")
        if self.directions not in (1, 2, 4):
            raise ValueError(f"directions: expected 1, 2 or 4, got {self.directions!r}")
        if not self.emb_scale > 0:
            raise ValueError(f"emb_scale: expected a number > 0, got {self.emb_scale!r}")

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(range(self.min_offset, self.max_offset + 1))


def patch_geometry(config: CpcConfig, size: int) -> tuple[int, int, int]:
    """(patch, stride, span) in px for a `size` px input: the reference grid scaled, span = what the grid covers."""
    patch = max(1, round(config.patch_size * size / REFERENCE_SIZE))
    stride = max(1, round(config.patch_stride * size / REFERENCE_SIZE))
    return patch, stride, patch + (config.grid - 1) * stride


def cut_patches(image: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(C, S, S) -> (G * G, C, patch, patch), row-major: patch (r, c) starts at pixel (r * stride, c * stride)."""
    grid = image.unfold(1, patch, stride).unfold(2, patch, stride)  # (C, G, G, patch, patch)
    return grid.permute(1, 2, 0, 3, 4).reshape(-1, image.shape[0], patch, patch).contiguous()


def augment_patches(patches: torch.Tensor, jitter: int) -> torch.Tensor:
    """Per patch: a random (p - jitter) px window padded back to p at the centre, a flip, one colour channel kept.

    Dropped channels and padding are 0, the dataset mean after Normalize.
    Draws come from torch's RNG (seeded per image by SeededAugmentation).
    """
    n, channels, side, _ = patches.shape
    if jitter > 0:
        keep, pad = side - jitter, jitter // 2
        top, left = torch.randint(0, jitter + 1, (n,)), torch.randint(0, jitter + 1, (n,))
        rows = (top[:, None] + torch.arange(keep))[:, None, :, None]
        cols = (left[:, None] + torch.arange(keep))[:, None, None, :]
        window = patches[torch.arange(n)[:, None, None, None], torch.arange(channels)[None, :, None, None], rows, cols]
        patches = F.pad(window, (pad, jitter - pad, pad, jitter - pad))
    flip = torch.rand(n) < 0.5
    patches = torch.where(flip[:, None, None, None], patches.flip(-1), patches)
    kept = F.one_hot(torch.randint(0, channels, (n,)), channels).to(patches.dtype)
    return patches * kept[:, :, None, None]


class PatchGrid:
    """One image -> its (grid * grid, 3, patch, patch) patches: CPC v1's crop and flip, the grid, patch augmentation."""

    def __init__(self, config: CpcConfig, input_spec: InputSpec) -> None:
        self.patch, self.stride, span = patch_geometry(config, input_spec.size)
        self.jitter = self.patch - int(self.patch * JITTER) if config.patch_augment else 0
        self.augment = config.patch_augment
        self.image = transforms.Compose([
            transforms.Resize(round(span * RESIZE)), transforms.RandomCrop(span), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(input_spec.mean, input_spec.std)])

    def __call__(self, image: Any) -> torch.Tensor:
        patches = cut_patches(self.image(image), self.patch, self.stride)
        return augment_patches(patches, self.jitter) if self.augment else patches

    def __repr__(self) -> str:
        return f"PatchGrid(patch={self.patch}, stride={self.stride}, augment={self.augment}, image={self.image!r})"


class CausalBlock(nn.Module):
    """A residual block whose output at row r reads rows r - 1 and r of its input only (columns within 1).

    As CPC v2's pixelCNN: 1x1 down to `hidden`, a 1x3 convolution along the
    row, a 2x1 one over the row above and this one (padded on top), 1x1 back.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(dim, hidden, 1)
        self.along = nn.Conv2d(hidden, hidden, (1, 3), padding=(0, 1))
        self.down = nn.Conv2d(hidden, hidden, (2, 1))
        self.expand = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.along(F.relu(self.reduce(x)))
        h = F.relu(self.down(F.pad(h, (0, 0, 1, 0))))
        return x + self.expand(h)


class MaskedContext(nn.Module):
    """PixelCNN-style context over a (B, D, G, G) grid: c[r, j] depends on z[r', j'] only for r - L <= r' <= r
    and |j' - j| <= L, L = number of blocks."""

    def __init__(self, dim: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(CausalBlock(dim, hidden) for _ in range(blocks)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(self.blocks(z))


def grid_info_nce(predictions: Sequence[torch.Tensor], targets: torch.Tensor, offsets: Sequence[int]) -> torch.Tensor:
    """CPC's InfoNCE, averaged over offsets; negatives are every patch of the global batch (other images and places).

    targets: (B, T, G, G) on this process. predictions[i]: (B, T, G - k, G), the
    prediction made at row r (< G - k) of the target at row r + k, k = offsets[i].
    Each offset's loss is the mean cross-entropy over its predictions; v2's
    appendix code sums them instead, which Adam's updates do not see (they are
    invariant to the loss's scale) but SGD's would.
    """
    batch, dim, grid, width = targets.shape
    every = all_gather_with_grad(targets.permute(0, 2, 3, 1).reshape(-1, dim).float())  # (world * B * G * G, T)
    device = targets.device
    total = targets.new_zeros((), dtype=torch.float32)
    for k, prediction in zip(offsets, predictions):
        rows = grid - k
        queries = prediction.permute(0, 2, 3, 1).reshape(-1, dim).float()  # ordered (image, row, column)
        image = torch.arange(batch, device=device).repeat_interleave(rows * width) + get_rank() * batch
        place = torch.arange(rows * width, device=device).repeat(batch)  # row * width + column, rows < G - k
        labels = image * grid * width + place + k * width
        total = total + F.cross_entropy(queries @ every.T, labels)
    return total / len(offsets)


class CpcHead(nn.Module):
    """Context network, target projection and one linear predictor per offset, for one direction."""

    def __init__(self, dim: int, config: CpcConfig) -> None:
        super().__init__()
        self.offsets = config.offsets
        self.scale = config.emb_scale
        self.context = MaskedContext(dim, config.context_dim, config.context_blocks)
        self.target = nn.Conv2d(dim, config.target_dim, 1)
        self.predictors = nn.ModuleList(nn.Conv2d(dim, config.target_dim, 1) for _ in self.offsets)

    def predictions(self, z: torch.Tensor) -> list[torch.Tensor]:
        """(B, D, G, G) latents -> per offset k, the (B, T, G - k, G) predictions of the rows k below."""
        context = self.context(z)
        grid = z.shape[2]
        return [self.scale * predictor(context[:, :, :grid - k]) for k, predictor in zip(self.offsets, self.predictors)]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return grid_info_nce(self.predictions(z), self.target(z), self.offsets)


class CpcModel(RecipeModel):
    def __init__(self, trunk: Backbone, config: CpcConfig) -> None:
        super().__init__()
        self.trunk = trunk
        self.grid = config.grid
        self.heads = nn.ModuleList(CpcHead(feature_dim(trunk), config) for _ in range(config.directions))

    def latents(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, G * G, C, p, p) patches -> (B, D, G, G): each patch encoded on its own (res5avg)."""
        batch, count = patches.shape[:2]
        if count != self.grid ** 2:
            raise RuntimeError(f"CPC expected {self.grid ** 2} patches per image, got {count}")
        z = pooled(self.trunk, patches.flatten(0, 1))
        return z.view(batch, self.grid, self.grid, -1).permute(0, 3, 1, 2)

    def forward(self, views: tuple[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        z = self.latents(views[0])
        losses = [head(torch.rot90(z, turns, dims=(2, 3))) for turns, head in zip(TURNS, self.heads)]
        return torch.stack(losses).mean()


@RECIPES.register("cpc")
class Cpc(Recipe):
    """CPC v2: patch latents rows ahead from a masked context, InfoNCE (Hénaff et al. 2020, arXiv 1905.09272)."""

    name = "cpc"
    paper = ("Hénaff, Srinivas, De Fauw, Razavi, Doersch, Eslami, van den Oord. Data-Efficient Image Recognition "
             "with Contrastive Predictive Coding. ICML 2020; van den Oord, Li, Vinyals. Representation Learning "
             "with Contrastive Predictive Coding. arXiv 1807.03748, 2018")
    Config = CpcConfig
    sync_bn = False  # v2 normalises per patch (LayerNorm); batch statistics shared over GPUs would only add coupling
    test_settings = {"grid": 4, "max_offset": 3, "context_dim": 64, "context_blocks": 2}  # CPU-sized registry tests

    def build(self, trunk: Backbone, config: CpcConfig, dataset_size: int) -> CpcModel:
        return CpcModel(trunk, config)

    def views(self, config: CpcConfig, input_spec: InputSpec, dataset: Any) -> Views:
        return Views(PatchGrid(config, input_spec))
