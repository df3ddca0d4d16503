"""What Siamese recipes share (MoCo, BYOL, SimSiam, and any later one): losses, EMA target, key queue, MoCo v2's views.

Functions only, no registration. The losses compute in float32 whatever the
autocast dtype, and take no gradient through the branch the papers stop.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.protocol import InputSpec
from checkpoints.recipes.augment import Views, simclr_augmentation


def momentum_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` that only an EMA moves: no parameter requires a gradient.

    Leave it in training mode (its BN uses batch statistics, as the papers'
    target and key encoders do): the engine saves every sub-network except
    those in eval mode with no trainable parameter, so it is saved and resumed.
    """
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter, in place (buffers untouched)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's EMA schedule: `base` at step 0 rising to 1 at `total_steps` by a half cosine (1 after it)."""
    progress = min(1.0, step / max(1, total_steps))
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


def info_nce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: each query against its own key (the positive) and every row of `queue` (negatives).

    Rows are L2-normalised here; keys and queue take no gradient, and the queue
    is read into a fresh tensor, so the caller may enqueue into it in place right after.
    Cross-entropy with the positive at index 0, mean over the queries.
    """
    q = F.normalize(query.float(), dim=1)
    k = F.normalize(key.detach().float(), dim=1)
    negatives = F.normalize(queue.detach().float(), dim=1)  # a new tensor: autograd keeps this, not the queue
    logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ negatives.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def negative_cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, stopgrad(z)), mean over the batch: no gradient reaches `target`."""
    return -F.cosine_similarity(prediction.float(), target.detach().float(), dim=1).mean()


def normalized_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's loss ||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, stopgrad(z)), mean over the batch."""
    return 2 + 2 * negative_cosine(prediction, target)


@torch.no_grad()
def enqueue_(queue: torch.Tensor, pointer: torch.Tensor, keys: torch.Tensor) -> None:
    """Write `keys` into the ring buffer `queue` (K, D) from row `pointer` on, wrapping past the end; move the pointer.

    The oldest rows go first, whatever K is against the batch (not necessarily
    a multiple of it); of more than K keys only the last K stay. `pointer` is a
    0-d integer tensor on the queue's device: no host synchronisation.
    """
    size, count = len(queue), len(keys)
    if count > size:
        pointer.add_(count - size).remainder_(size)
        keys, count = keys[count - size:], size
    rows = (pointer + torch.arange(count, device=queue.device)) % size
    queue.index_copy_(0, rows, keys.detach().to(queue.dtype))
    pointer.add_(count).remainder_(size)


def mocov2_views(input_spec: InputSpec, color_strength: float = 0.5, crop_min_scale: float = 0.2) -> Views:
    """MoCo v2's views (SimSiam's too): two draws of one pipeline, crops of scale (crop_min_scale, 1).

    At strength 0.5 the colour jitter is (0.4, 0.4, 0.4, 0.1) with p=0.8, grey
    p=0.2, and blur p=0.5 from 64 px up (as simclr_augmentation decides).
    """
    augment = simclr_augmentation(input_spec, color_strength=color_strength, scale=(crop_min_scale, 1.0))
    return Views(augment, augment)
