"""View augmentations the recipes share (SimCLR's family), at the size and normalisation the run resolved.

ContrastiveCrop (Peng et al., CVPR 2022, arXiv 2202.03278) replaces the random
resized crop with one whose centre is drawn, per image, within a box around
the object the trunk's last feature map points at. Its boxes live in the
model (`ContrastiveCropBoxes`, a buffer: saved with the training state, so a
resumed run crops as an uninterrupted one) and reach the augmentation through
a CPU copy (`BoxTable`) the crop step reads by image index: SeededAugmentation
calls a transform with `takes_index = True` as transform(image, index).
DataLoader workers are started per epoch, after `on_epoch_start` has updated
the table, so they read the boxes of the epoch they serve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn
from torchvision import transforms

from benchmark import distributed
from benchmark.accel import eval_loader, eval_mode
from benchmark.protocol import InputSpec

CROPS = ("random", "contrastive")  # values of a recipe's `crop` field
RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect ratios


def simclr_augmentation(input_spec: InputSpec, color_strength: float = 1.0, scale: tuple[float, float] = (0.08, 1.0),
                        blur: bool | None = None, solarize: float = 0.0, blur_probability: float = 0.5,
                        boxes: ContrastiveCropBoxes | None = None) -> Any:
    """RandomResizedCrop, flip, colour jitter (p=0.8), grey (p=0.2), Gaussian blur, Normalize (Chen et al. 2020).

    Blur is on by default from 64 px up (SimCLR leaves it out on CIFAR-sized
    images); `solarize` > 0 adds BYOL's solarisation with that probability.
    With `boxes` the crop is ContrastiveCrop's over those boxes (same scale and
    ratios), and the pipeline is called as pipeline(image, index).
    """
    size = input_spec.size
    s = color_strength
    steps: list[Any] = [
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
    ]
    if blur if blur is not None else size >= 64:
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
        steps.append(transforms.RandomApply([transforms.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_probability))
    if solarize > 0:
        steps.append(transforms.RandomSolarize(128, p=solarize))
    steps += [transforms.ToTensor(), transforms.Normalize(input_spec.mean, input_spec.std)]
    if boxes is not None:
        return CroppedPipeline(ContrastiveCrop(boxes.table, size, scale, alpha=boxes.alpha), transforms.Compose(steps))
    return transforms.Compose([transforms.RandomResizedCrop(size, scale=scale), *steps])


def takes_index(transform: Any) -> bool:
    """Whether `transform` is called as transform(image, index) (it reads per-image state)."""
    return bool(getattr(transform, "takes_index", False))


class Views:
    """One image -> a tuple of independently augmented views, one per transform."""

    def __init__(self, *transforms_: Callable[..., torch.Tensor]) -> None:
        self.transforms = transforms_
        self.takes_index = any(takes_index(t) for t in transforms_)

    def __call__(self, image: Any, index: int | None = None) -> tuple[torch.Tensor, ...]:
        return tuple(transform(image, index) if takes_index(transform) else transform(image)
                     for transform in self.transforms)

    def __repr__(self) -> str:
        return f"Views({', '.join(repr(t) for t in self.transforms)})"


class CroppedPipeline:
    """crop(image, index) followed by the index-free rest of a pipeline."""

    takes_index = True

    def __init__(self, crop: Callable[[Any, int | None], Any], rest: Callable[[Any], Any]) -> None:
        self.crop, self.rest = crop, rest

    def __call__(self, image: Any, index: int | None = None) -> Any:
        return self.rest(self.crop(image, index))

    def __repr__(self) -> str:
        return f"CroppedPipeline({self.crop!r}, {self.rest!r})"


class BoxTable:
    """The data pipeline's CPU copy of the boxes: (N, 4) [top, left, bottom, right] in fractions of the image side.

    `ready` is false until the first localisation; until then the crop is a
    plain RandomResizedCrop (the paper's warm-up epochs).
    """

    def __init__(self, size: int) -> None:
        self.boxes = whole_image_boxes(size)
        self.ready = torch.zeros((), dtype=torch.bool)


def whole_image_boxes(n: int) -> torch.Tensor:
    return torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(n, 1)


class ContrastiveCrop:
    """A RandomResizedCrop whose centre is drawn from Beta(alpha, alpha) over the image's box (Peng et al. 2022).

    Area fraction and aspect ratio are drawn as RandomResizedCrop draws them;
    the top-left corner is then drawn so the crop's centre falls in the box,
    shifted only as far as needed to keep the crop inside the image. alpha < 1
    favours centres near the box's edges (the paper's centre-suppressed
    sampling). Every draw comes from torch's RNG, which SeededAugmentation seeds
    per image and epoch.
    """

    takes_index = True

    def __init__(self, table: BoxTable, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = RATIO, alpha: float = 0.6) -> None:
        self.table, self.size, self.scale, self.ratio, self.alpha = table, size, scale, ratio, alpha

    def __call__(self, image: Any, index: int | None) -> Any:
        if index is None:
            raise ValueError("ContrastiveCrop needs the image's dataset index: call the views as views(image, index) "
                             "(SeededAugmentation does)")
        if bool(self.table.ready):
            _, height, width = TF.get_dimensions(image)
            top, left, h, w = contrastive_crop_params(height, width, self.table.boxes[index].tolist(), self.scale,
                                                      self.ratio, self.alpha)
        else:
            top, left, h, w = transforms.RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
        return TF.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)

    def __repr__(self) -> str:
        return f"ContrastiveCrop(size={self.size}, scale={self.scale}, alpha={self.alpha})"


def contrastive_crop_params(height: int, width: int, box: list[float], scale: tuple[float, float],
                            ratio: tuple[float, float], alpha: float) -> tuple[int, int, int, int]:
    """(top, left, h, w) of one ContrastiveCrop in a height x width image with box [top, left, bottom, right].

    Ten tries at an area and ratio that fit, as RandomResizedCrop; then its
    fallback, the central crop at the clamped ratio.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = _corner(box[0], box[2], height, h, float(beta.sample()))
            left = _corner(box[1], box[3], width, w, float(beta.sample()))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _corner(start: float, end: float, side: int, extent: int, u: float) -> int:
    """First pixel of a crop of `extent` whose centre is at fraction u of [start, end) (fractions of `side`)."""
    low = min(max(int(side * start) - extent // 2, 0), side - extent)
    high = min(max(int(side * end) - extent // 2, 0), side - extent)
    return low + int((high - low) * u)


def heat_boxes(maps: torch.Tensor, size: tuple[int, int], threshold: float = 0.1) -> torch.Tensor:
    """Semantic-aware localisation: (N, C, h, w) feature maps -> (N, 4) boxes [top, left, bottom, right].

    The channel sum of each map, min-max normalised to [0, 1] and upsampled
    bilinearly to the image's `size`; the box is the smallest one holding every
    pixel above `threshold`, as fractions of the image side (bottom and right
    exclusive). A flat map (a 1x1 one, say) gives the whole image.
    """
    heat = maps.float().sum(1, keepdim=True)
    flat = heat.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    span = (high - low)[:, None, None, None]
    heat = torch.where(span > 0, (heat - low[:, None, None, None]) / span.clamp_min(1e-12), torch.zeros_like(heat))
    heat = F.interpolate(heat, size=size, mode="bilinear", align_corners=False)[:, 0]
    mask = heat > threshold
    rows, cols = mask.any(2), mask.any(1)
    found = rows.any(1)
    height, width = size
    top, left = rows.float().argmax(1), cols.float().argmax(1)
    bottom = height - rows.flip(1).float().argmax(1)
    right = width - cols.flip(1).float().argmax(1)
    boxes = torch.stack([top / height, left / width, bottom / height, right / width], dim=1)
    return torch.where(found[:, None], boxes, whole_image_boxes(len(boxes)).to(boxes.device))


def crop_boxes(crop: str, dataset_size: int, epochs: int) -> ContrastiveCropBoxes | None:
    """The model's boxes for a recipe's `crop` field: None for "random"."""
    return ContrastiveCropBoxes(dataset_size, epochs) if crop == "contrastive" else None


def bind_boxes(boxes: ContrastiveCropBoxes | None, crop: str, input_spec: InputSpec,
               dataset: Any) -> ContrastiveCropBoxes | None:
    """For crop "contrastive": `boxes` bound to the dataset's training split under its evaluation transform.

    A Recipe's `views` calls it with the boxes its `build` put in the model
    (None for crop "random").
    """
    if crop != "contrastive":
        return None
    if boxes is None:
        raise RuntimeError("crop='contrastive': build the model before its views (the boxes live in the model)")
    return boxes.bind(dataset.open_split(dataset.train_split, input_spec.eval_transform(dataset)))


class ContrastiveCropBoxes(nn.Module):
    """ContrastiveCrop's per-image boxes as model buffers, relocalised from the trunk every fifth of training.

    As the paper's code: boxes are the whole image and crops are plain random
    resized crops until the first localisation; localisation runs at the
    start of epochs every, 2 * every, ... (every = epochs / 5, at least 1; never
    at epoch 0) on the training images under the evaluation transform, from the
    trunk's last feature map in eval mode, threshold k = 0.1; crop centres
    follow Beta(0.6, 0.6) within the box. `bind` names the images (a Recipe's
    `views` does it); under torchrun each process localises its share and the
    boxes are gathered, so every process holds the same table.
    """

    def __init__(self, dataset_size: int, epochs: int, threshold: float = 0.1, alpha: float = 0.6,
                 batch_size: int = 256) -> None:
        super().__init__()
        self.register_buffer("boxes", whole_image_boxes(dataset_size))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.table = BoxTable(dataset_size)
        self.epochs, self.every = epochs, max(1, round(epochs / 5))
        self.threshold, self.alpha, self.batch_size = threshold, alpha, batch_size
        self.images: Any = None

    def bind(self, images: torch.utils.data.Dataset) -> ContrastiveCropBoxes:
        """Localise on `images`: item i is (evaluation tensor of training image i, i); returns self."""
        if len(images) != len(self.boxes):  # type: ignore[arg-type]
            raise ValueError(f"ContrastiveCrop: {len(images)} images to localise, "  # type: ignore[arg-type]
                             f"but boxes for {len(self.boxes)}")
        self.images = images
        return self

    def due(self, epoch: int) -> bool:
        return 0 < epoch < self.epochs and epoch % self.every == 0

    def on_epoch_start(self, epoch: int, trunk: nn.Module) -> None:
        if self.due(epoch):
            self.update(trunk)

    @torch.no_grad()
    def update(self, trunk: nn.Module) -> None:
        """Relocalise every image from `trunk` (in eval mode for the pass, its mode restored after)."""
        if self.images is None:
            raise RuntimeError("ContrastiveCropBoxes.update before bind(images): build the recipe's views first")
        tap = [t.name for t in trunk.taps if t.stride > 0][-1]
        device = self.boxes.device
        loader, _ = eval_loader(self.images, self.batch_size, 0, device)  # this process's share under torchrun
        rows, indices = [], []
        with eval_mode(trunk):
            for batch, index in loader:
                maps = trunk.forward_taps(batch.to(device), [tap])[tap]
                rows.append(heat_boxes(maps, tuple(batch.shape[-2:]), self.threshold).cpu())
                indices.append(index)
        boxes = distributed.gather_rows(torch.cat(rows).numpy(), torch.cat(indices).numpy(), len(self.images))
        self.boxes.copy_(torch.from_numpy(boxes))
        self.updates += 1
        self._mirror()

    def _mirror(self) -> None:
        self.table.boxes.copy_(self.boxes.detach().cpu())
        self.table.ready.fill_(bool(self.updates > 0))

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._mirror()
