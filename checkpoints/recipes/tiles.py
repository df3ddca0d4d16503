"""Jigsaw tiles, shared by `jigsaw` and `pirl`: the 3x3 grid with gaps and jitter, and the permutation set.

The geometry follows Goyal et al. 2019 (VISSL's ImgPatchesFromTensor): a
255-pixel square cut into 85-pixel cells, one 64-pixel tile at a random offset
inside each cell, so neighbouring tiles are apart by a random gap (0 to 42
pixels) and no tile edge lines up with its neighbour's. Other input sizes scale
those numbers by size / 224.

`permutation_set` is Noroozi & Favaro's greedy maximal-Hamming selection:
start from one (seeded) random permutation of the 9! and repeatedly add the
permutation whose minimal Hamming distance to those chosen is largest (the
first in lexicographic order on ties).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from checkpoints.models import Backbone
from checkpoints.recipes.base import pooled

GRID = 3
TILES = GRID * GRID


@functools.lru_cache(maxsize=4)
def all_permutations(n: int) -> np.ndarray:
    """Every permutation of range(n), (n!, n) int8, in lexicographic order (row i has rank i)."""
    if n == 1:
        return np.zeros((1, 1), dtype=np.int8)
    smaller = all_permutations(n - 1)
    blocks = []
    for first in range(n):
        rest = np.array([v for v in range(n) if v != first], dtype=np.int8)
        blocks.append(np.hstack([np.full((len(smaller), 1), first, dtype=np.int8), rest[smaller]]))
    out = np.vstack(blocks)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=4)
def _bit_counts(n: int) -> np.ndarray:
    return np.array([bin(m).count("1") for m in range(1 << n)], dtype=np.int64)


def lexicographic_rank(perms: np.ndarray) -> np.ndarray:
    """Rank of each row of `perms` (M, n) among all n! permutations (its Lehmer code, read as a number)."""
    n = perms.shape[1]
    ones_below = _bit_counts(n)
    seen = np.zeros(len(perms), dtype=np.int64)
    rank = np.zeros(len(perms), dtype=np.int64)
    for i in range(n):
        value = perms[:, i].astype(np.int64)
        rank += (value - ones_below[seen & ((1 << value) - 1)]) * math.factorial(n - 1 - i)
        seen |= 1 << value
    return rank


@functools.lru_cache(maxsize=8)
def permutation_set(size: int, n: int = TILES, seed: int = 0) -> np.ndarray:
    """`size` permutations of range(n) chosen greedily by maximal minimal Hamming distance; (size, n) int64.

    Exactly the eager greedy (each step: the candidate farthest from the chosen
    set, lowest rank on ties), computed level by level: while the best distance
    is d, the greedy takes candidates in rank order, skipping any within d - 1
    of a chosen one. Those are found by enumerating the Hamming ball around each
    chosen permutation (or by comparing with all when the ball is most of the
    n! candidates), never by comparing every candidate with every choice.
    """
    space = _HammingBalls(n)
    total = len(space.everything)
    if not 1 <= size <= total:
        raise ValueError(f"permutation set size: expected 1 to {total}, got {size}")
    chosen = [int(torch.randint(total, (1,), generator=torch.Generator().manual_seed(seed)))]
    level = n  # the largest minimal distance any candidate can still have
    while len(chosen) < size:
        blocked = np.zeros(total, dtype=bool)  # within level - 1 of a chosen permutation
        space.mark(blocked, chosen, level - 1)
        start = 0
        while len(chosen) < size and start < total:
            free = np.flatnonzero(~blocked[start:start + 1024]) + start
            if len(free) == 0:
                start += 1024
                continue
            candidates = free[:256]  # in rank order; the greedy's choices among them, one after the other:
            near = hamming_distances(space.everything[candidates]) < level
            taken, skipped = [], np.zeros(len(candidates), dtype=bool)
            for i in range(len(candidates)):
                if not skipped[i] and len(chosen) + len(taken) < size:
                    taken.append(int(candidates[i]))
                    skipped |= near[i]
            chosen += taken
            space.mark(blocked, taken, level - 1)
            start = int(candidates[-1]) + 1
        level -= 1
    out = space.everything[chosen].astype(np.int64)
    out.setflags(write=False)
    return out


class _HammingBalls:
    """The n! permutations in rank order, and Hamming balls around any of them."""

    def __init__(self, n: int) -> None:
        self.everything = all_permutations(n)
        self.columns = np.ascontiguousarray(self.everything.T)
        moved = (self.everything != np.arange(n, dtype=np.int8)).sum(1)
        self.balls = [self.everything[moved <= radius] for radius in range(n + 1)]  # sigma moving <= radius points

    def mark(self, blocked: np.ndarray, centres: Sequence[int], radius: int) -> None:
        """Set `blocked` at every permutation within Hamming distance `radius` of one of the `centres` (ranks)."""
        n = self.everything.shape[1]
        ball = self.balls[radius]  # p[sigma] for sigma in the ball: the permutations within `radius` of p
        if len(ball) * 4 > len(self.everything):  # the ball is most of the space: compare with everything
            for centre in centres:
                agreements = np.zeros(len(self.everything), dtype=np.uint8)
                for column, value in zip(self.columns, self.everything[centre]):
                    agreements += column == value
                blocked |= agreements >= n - radius
            return
        chunk = max(1, 2_000_000 // len(ball))
        for start in range(0, len(centres), chunk):
            part = self.everything[np.asarray(centres[start:start + chunk])]
            blocked[lexicographic_rank(part[:, ball].reshape(-1, n))] = True


def hamming_distances(perms: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances of the rows of `perms` (K, n) -> (K, K)."""
    return (perms[:, None, :] != perms[None, :, :]).sum(2)


def shuffle(tiles: Sequence[Any], permutation: Sequence[int]) -> list[Any]:
    """Position i of the puzzle gets tile permutation[i] (Noroozi & Favaro's convention)."""
    return [tiles[int(k)] for k in permutation]


def unshuffle(shuffled: Sequence[Any], permutation: Sequence[int]) -> list[Any]:
    """The inverse of `shuffle`: tile k back from the position holding it."""
    position = np.argsort(np.asarray(permutation))
    return [shuffled[int(p)] for p in position]


class TileGeometry:
    """Puzzle side, cell and tile sizes for an input size: VISSL's 255 / 85 / 64 at 224, scaled by size / 224."""

    def __init__(self, size: int) -> None:
        self.cell = max(3, round(85 * size / 224))
        self.tile = max(2, round(64 * size / 224))
        self.side = GRID * self.cell
        self.resize = max(self.side + 1, round(256 * size / 224))

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """(left, top, right, bottom) of the 9 tiles in row-major order, each at a random offset in its cell."""
        slack = self.cell - self.tile
        offsets = torch.randint(slack + 1, (TILES, 2)).tolist()
        return [(col * self.cell + dx, row * self.cell + dy, col * self.cell + dx + self.tile,
                 row * self.cell + dy + self.tile)
                for (row, col), (dx, dy) in zip(((r, c) for r in range(GRID) for c in range(GRID)), offsets)]

    def cut(self, puzzle: Image.Image) -> list[Image.Image]:
        """The 9 jittered tiles of a `side` x `side` image, row-major."""
        if puzzle.size != (self.side, self.side):
            raise ValueError(f"expected a {self.side}x{self.side} puzzle image, got {puzzle.size}")
        return [puzzle.crop(box) for box in self.boxes()]


def color_jitter(strength: float, hue: float) -> Any:
    """ColorJitter(strength, strength, strength, hue); nothing when both are 0."""
    if strength == 0 and hue == 0:
        return transforms.Compose([])
    return transforms.ColorJitter(strength, strength, strength, hue)


def tile_features(trunk: Backbone, tiles: torch.Tensor) -> torch.Tensor:
    """Every tile through the shared trunk: (B, 9, C, t, t) -> res5avg features (B, 9, D)."""
    batch = tiles.shape[0]
    return pooled(trunk, tiles.flatten(0, 1)).view(batch, tiles.shape[1], -1)


def stack(images: Sequence[Image.Image], transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """Each image through `transform` (independent random draws), stacked (K, C, H, W)."""
    return torch.stack([transform(image) for image in images])
