"""Pretext-task labels (rotations, jigsaw permutations, relative positions) and PIRL's loss, against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from benchmark.config import build_config
from benchmark.protocol import InputSpec
from checkpoints.models import build_seeded
from checkpoints.recipes.jigsaw import JigsawConfig, JigsawViews
from checkpoints.recipes.base import pooled
from checkpoints.recipes.pirl import Pirl, PirlModel
from checkpoints.recipes.relative_position import (
    OFFSETS, PatchLayout, PatchPairs, RelativePositionConfig, drop_colours, project_colours)
from checkpoints.recipes.rotnet import RotnetModel, rotation_labels, rotations
from checkpoints.recipes.tiles import (
    TILES, TileGeometry, all_permutations, hamming_distances, permutation_set, shuffle, tile_features, unshuffle)

PLAIN = InputSpec(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # tensors are pixels / 255


# --- rotnet -----------------------------------------------------------------------------------------------------

def test_rotating_back_by_the_label_restores_the_image_exactly() -> None:
    image = torch.randn(3, 7, 7)
    stack = rotations(image)
    assert stack.shape == (4, 3, 7, 7)
    assert torch.equal(stack[0], image)
    assert torch.equal(stack[1][:, 0, 0], image[:, 0, -1])  # counter-clockwise: the top-right corner goes top-left
    for label in range(4):
        assert torch.equal(torch.rot90(stack[label], -label, dims=(-2, -1)), image)
    assert len({stack[k].numpy().tobytes() for k in range(4)}) == 4


def test_all_four_rotations_of_each_image_share_the_batch_with_their_labels() -> None:
    images = torch.randn(5, 3, 6, 6)
    batch = torch.stack([rotations(image) for image in images]).flatten(0, 1)  # as the model flattens (B, 4, ...)
    labels = rotation_labels(5)
    assert torch.equal(torch.bincount(labels), torch.full((4,), 5))
    for row, label in enumerate(labels.tolist()):
        assert torch.equal(torch.rot90(batch[row], -label, dims=(-2, -1)), images[row // 4])
    model = RotnetModel(build_seeded("resnet18", seed=0))
    loss, extras = model((torch.stack([rotations(image) for image in images]),), torch.arange(5))
    assert loss.ndim == 0 and 0 <= float(extras["pretext_top1"]) <= 100


# --- jigsaw permutations ----------------------------------------------------------------------------------------

def greedy_by_brute_force(n: int, size: int, first: int) -> np.ndarray:
    """Noroozi & Favaro's greedy with the minimum: every candidate's distance to every chosen one, each step."""
    candidates = np.array(list(itertools.permutations(range(n))))
    chosen = [first]
    distance = (candidates != candidates[first]).sum(1)  # to the nearest chosen one
    while len(chosen) < size:
        distance[chosen] = -1
        chosen.append(int(np.argmax(distance)))  # the first of the farthest
        distance = np.minimum(distance, (candidates != candidates[chosen[-1]]).sum(1))
    return candidates[chosen]


def first_choice(n: int, seed: int) -> int:
    return int(torch.randint(math.factorial(n), (1,), generator=torch.Generator().manual_seed(seed)))


def minimal_distance(perms: np.ndarray) -> int:
    distances = hamming_distances(perms)
    return int(distances[~np.eye(len(perms), dtype=bool)].min())


@pytest.mark.parametrize(("n", "size", "seed"), [(4, 10, 0), (5, 30, 1), (6, 120, 2), (6, 300, 3), (9, 30, 0)])
def test_permutation_set_is_the_greedy_maximisation_of_the_minimal_hamming_distance(n, size, seed) -> None:
    expected = greedy_by_brute_force(n, size, first_choice(n, seed))
    chosen = permutation_set(size, n, seed)
    assert np.array_equal(chosen, expected)
    assert minimal_distance(chosen) == minimal_distance(expected)


def test_four_permutations_of_four_reach_the_best_minimal_distance_by_exhaustive_search() -> None:
    every = all_permutations(4)
    best = max(minimal_distance(every[list(subset)]) for subset in itertools.combinations(range(24), 4))
    assert best == 4 and minimal_distance(permutation_set(4, 4, seed=0)) == best


def test_permutation_sets_of_nine_tiles_are_distinct_seeded_and_spread() -> None:
    hundred = permutation_set(100)
    assert hundred.shape == (100, TILES) and sorted(map(sorted, hundred.tolist())) == [list(range(9))] * 100
    assert minimal_distance(hundred) == 6 and minimal_distance(permutation_set(1000)) == 5
    assert not np.array_equal(permutation_set(100, seed=1), hundred)
    large = permutation_set(10000)  # over all 362880: seconds, not minutes
    assert len(np.unique(large, axis=0)) == 10000


def test_shuffling_then_unshuffling_restores_the_tiles() -> None:
    tiles = [torch.full((3, 2, 2), float(k)) for k in range(TILES)]
    for permutation in permutation_set(50):
        shuffled = shuffle(tiles, permutation)
        assert [int(t[0, 0, 0]) for t in shuffled] == permutation.tolist()
        assert all(a is b for a, b in zip(unshuffle(shuffled, permutation), tiles))


def cell_pattern(side: int, cell: int) -> Image.Image:
    """A grey image whose pixel value says which 3x3 cell (of `cell` pixels) it lies in: 10 + 20 * cell index."""
    y, x = np.mgrid[:side, :side]
    value = 10 + 20 * (3 * np.minimum(y // cell, 2) + np.minimum(x // cell, 2))
    return Image.fromarray(np.repeat(value[:, :, None], 3, axis=2).astype(np.uint8))


def test_the_labelled_permutation_of_a_jigsaw_view_puts_the_tiles_back() -> None:
    config = build_config(JigsawConfig, {"num_permutations": "10", "tile_jitter": "0", "grey_probability": "0"},
                          owner="test")
    views = JigsawViews(config, PLAIN)
    geometry = views.geometry
    image = cell_pattern(geometry.resize, geometry.cell)  # already the resize size: Resize leaves it alone
    mirror = [3 * (k // 3) + 2 - k % 3 for k in range(TILES)]  # the puzzle may be flipped before it is cut
    torch.manual_seed(0)
    labels = []
    for _ in range(20):
        tiles, label = views(image)
        assert tiles.shape == (TILES, 3, geometry.tile, geometry.tile)
        centre = [round(float(t[0, geometry.tile // 2, geometry.tile // 2]) * 255) for t in tiles]
        source = [(v - 10) // 20 for v in unshuffle(centre, views.permutations[int(label)])]
        assert source in (list(range(TILES)), mirror)
        labels.append(int(label))
    assert len(set(labels)) > 5


def test_jigsaw_labels_are_balanced_over_many_draws() -> None:
    config = build_config(JigsawConfig, {"num_permutations": "5", "tile_jitter": "0"}, owner="test")  # faster
    views = JigsawViews(config, PLAIN)
    image = cell_pattern(40, 13)
    torch.manual_seed(0)
    counts = np.bincount([int(views(image)[1]) for _ in range(1000)], minlength=5)
    assert counts.sum() == 1000 and np.all(np.abs(counts - 200) < 57), counts  # 4.5 sigma


def test_tiles_lie_in_their_cells_with_a_gap_and_jitter() -> None:
    geometry = TileGeometry(224)
    assert (geometry.side, geometry.cell, geometry.tile, geometry.resize) == (255, 85, 64, 256)  # VISSL's numbers
    torch.manual_seed(0)
    offsets = set()
    for _ in range(50):
        for k, (left, top, right, bottom) in enumerate(geometry.boxes()):
            row, col = divmod(k, 3)
            assert right - left == bottom - top == 64
            assert col * 85 <= left and right <= (col + 1) * 85 and row * 85 <= top and bottom <= (row + 1) * 85
            offsets.add((left - col * 85, top - row * 85))
    assert len(offsets) > 100


def test_the_permutation_set_is_a_buffer_of_the_heads() -> None:
    from checkpoints.recipes.jigsaw import JigsawModel
    config = build_config(JigsawConfig, {"num_permutations": "10", "tile_dim": "16"}, owner="test")
    model = JigsawModel(build_seeded("resnet18", seed=0), config)
    assert torch.equal(model.head_state()["permutations"], torch.tensor(permutation_set(10)))
    assert not any(key.startswith("permutations") for key in model.trunk_state())


# --- relative position ------------------------------------------------------------------------------------------

def test_the_eight_offsets_are_the_neighbours_in_reading_order() -> None:
    assert list(OFFSETS) == [(r, c) for r in (-1, 0, 1) for c in (-1, 0, 1) if (r, c) != (0, 0)]


def coordinate_image(side: int) -> Image.Image:
    """Red is x, green is y, blue 0: a crop's first pixel tells where it came from."""
    y, x = np.mgrid[:side, :side]
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], axis=2).astype(np.uint8))


def test_the_second_patch_lies_at_the_labelled_position_and_labels_are_balanced() -> None:
    config = build_config(RelativePositionConfig, {"chromatic": "none", "max_scale": "1"}, owner="test")
    pairs = PatchPairs(config, PLAIN)
    layout = pairs.layout
    image = coordinate_image(layout.side)  # the resize size: Resize leaves it alone
    torch.manual_seed(0)
    labels = []
    for _ in range(800):
        first, second, label = pairs(image)
        corners = []
        for patch in (first, second):
            pixels = (patch * 255).round().long()
            x, y = pixels[0], pixels[1]
            assert torch.equal(x - x[:, :1], torch.arange(layout.patch).expand_as(x))  # a whole, unscaled crop
            assert torch.equal(y - y[:1, :], torch.arange(layout.patch)[:, None].expand_as(y))
            corners.append((int(x[0, 0]), int(y[0, 0])))
        (x1, y1), (x2, y2) = corners
        row, col = OFFSETS[int(label)]
        for step, delta in ((col, x2 - x1), (row, y2 - y1)):
            assert abs(delta - step * layout.stride) <= 2 * layout.jitter
        assert max(abs(x2 - x1), abs(y2 - y1)) >= layout.patch + layout.gap - 2 * layout.jitter > layout.patch
        labels.append(int(label))
    counts = np.bincount(labels, minlength=8)
    assert np.all(np.abs(counts - 100) < 45), counts  # 4.8 sigma


def test_patch_layout_at_224_is_doerschs() -> None:
    layout = PatchLayout(224)
    assert (layout.patch, layout.gap, layout.jitter) == (96, 48, 7)


def test_colour_dropping_keeps_one_channel_and_projection_removes_green_magenta() -> None:
    torch.manual_seed(0)
    patch = torch.randn(3, 5, 5)
    kept = set()
    for _ in range(30):
        dropped = drop_colours(patch)
        same = [c for c in range(3) if torch.equal(dropped[c], patch[c])]
        assert len(same) == 1 and all(dropped[c].std() < 0.05 for c in range(3) if c != same[0])
        kept.add(same[0])
    assert kept == {0, 1, 2}
    projected = project_colours(patch)
    axis = torch.tensor([-1.0, 2.0, -1.0]) / math.sqrt(6)
    assert torch.allclose(torch.einsum("c,chw->hw", axis, projected), torch.zeros(5, 5), atol=1e-6)
    grey = torch.rand(1, 5, 5).expand(3, 5, 5)
    assert torch.allclose(project_colours(grey), grey, atol=1e-6)


# --- pirl -------------------------------------------------------------------------------------------------------

def nce_float64(query, positive, negatives, temperature, z, n) -> float:
    """-log h(positive) - sum log(1 - h(negative)), h = P / (P + m / N), P = exp(q.v / T) / Z; one query at a time,
    each with its own m negatives (rows of `negatives`)."""
    total = 0.0
    for q, p, drawn in zip(query, positive, negatives):
        noise = len(drawn) / n

        def h(v):
            probability = math.exp(q @ v / temperature) / z
            return probability / (probability + noise)
        total += -math.log(h(p)) - sum(math.log(1 - h(v)) for v in drawn)
    return total / len(query)


def test_pirl_mixes_the_jigsaw_and_image_terms_and_moves_the_bank_towards_the_image() -> None:
    config = build_config(Pirl.Config, {"num_negatives": "7", "embedding_dim": "8", "jigsaw_weight": "0.3"},
                          owner="test")
    torch.manual_seed(0)
    model = PirlModel(build_seeded("resnet18", seed=0), config, dataset_size=20)
    image, tiles, index = torch.randn(4, 3, 32, 32), torch.randn(4, TILES, 3, 8, 8), torch.tensor([3, 0, 17, 9])
    negatives = torch.randint(20, (4, 7), generator=torch.Generator().manual_seed(1))
    model.draw_negatives = lambda batch: negatives
    bank = model.bank.clone()
    model.eval()  # BN as in the check below; eval also leaves the bank alone
    loss, extras = model((image, tiles), index)
    z = float(model.z)
    assert z > 0 and torch.equal(model.bank, bank)
    with torch.no_grad():
        f = F.normalize(model.image_head(pooled(model.trunk, image)), dim=1).double().numpy()
        g = F.normalize(model.jigsaw_head(model.tile_head(tile_features(model.trunk, tiles)).flatten(1)),
                        dim=1).double().numpy()
    memory = bank.double().numpy()
    jigsaw = nce_float64(g, memory[index], memory[negatives], 0.07, z, 20)
    plain = nce_float64(f, memory[index], memory[negatives], 0.07, z, 20)
    assert float(extras["nce_jigsaw"]) == pytest.approx(jigsaw, rel=1e-4)
    assert float(extras["nce_image"]) == pytest.approx(plain, rel=1e-4)
    assert float(loss.detach()) == pytest.approx(0.3 * jigsaw + 0.7 * plain, rel=1e-4)
    scores = np.concatenate([(g * memory[index]).sum(1, keepdims=True),
                             np.einsum("bd,bmd->bm", g, memory[negatives])], axis=1) / 0.07
    assert z == pytest.approx(np.exp(scores).mean() * 20, rel=1e-4)  # Z from the first batch's patch term

    model.train()
    model((image, tiles), index)
    assert float(model.z) == z  # set once
    with torch.no_grad():
        f = F.normalize(model.image_head(pooled(model.trunk, image)), dim=1)
    assert torch.allclose(model.bank[index], F.normalize(0.5 * bank[index] + 0.5 * f, dim=1), atol=1e-6)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(model.bank[untouched], bank[untouched])
    assert {"bank", "z"} <= set(model.head_state())
    assert not any(key.startswith(("bank", "z")) for key in model.trunk_state())
