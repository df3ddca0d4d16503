"""CPC: InfoNCE against a float64 formula, the context's receptive field, negatives across processes, patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.config import build_config
from benchmark.errors import SslBenchError
from benchmark.protocol import InputSpec
from checkpoints.models import build_seeded
from checkpoints.recipes import cpc
from checkpoints.recipes.cpc import (CpcConfig, CpcHead, MaskedContext, PatchGrid, augment_patches, cut_patches,
                                     grid_info_nce, patch_geometry)

SMALL = CpcConfig(grid=4, min_offset=1, max_offset=3, target_dim=5, context_dim=8, context_blocks=2)


def info_nce_float64(z: np.ndarray, c: np.ndarray, head: CpcHead) -> float:
    """Mean over offsets k of the mean over (image, row r < G - k, column) of -log softmax over every patch.

    The score of a prediction at (b, r, j) against patch n is
    emb_scale * (W_k c[b, :, r, j] + b_k) . (W_t z[n] + b_t); the positive is patch (b, r + k, j).
    """
    batch, dim, grid, _ = z.shape
    weight = lambda conv: conv.weight.detach().double().numpy()[:, :, 0, 0]  # noqa: E731
    bias = lambda conv: conv.bias.detach().double().numpy()  # noqa: E731
    patches = [(b, r, j) for b in range(batch) for r in range(grid) for j in range(grid)]
    targets = {p: weight(head.target) @ z[p[0], :, p[1], p[2]] + bias(head.target) for p in patches}
    total = 0.0
    for k, predictor in zip(head.offsets, head.predictors):
        losses = []
        for b, r, j in patches:
            if r + k >= grid:
                continue
            query = head.scale * (weight(predictor) @ c[b, :, r, j] + bias(predictor))
            scores = np.array([query @ targets[p] for p in patches])
            positive = scores[patches.index((b, r + k, j))]
            top = scores.max()
            losses.append(top + np.log(np.exp(scores - top).sum()) - positive)
        total += float(np.mean(losses))
    return total / len(head.offsets)


def test_info_nce_matches_the_float64_formula() -> None:
    torch.manual_seed(0)
    head = CpcHead(6, SMALL)
    z = torch.randn(3, 6, 4, 4)
    with torch.no_grad():
        got = float(head(z))
        c = head.context(z).double().numpy()
    assert got == pytest.approx(info_nce_float64(z.double().numpy(), c, head), rel=1e-5)


def gradient_support(output: torch.Tensor, z: torch.Tensor) -> np.ndarray:
    """(G, G) booleans: which grid places of z the (summed) output depends on."""
    (grad,) = torch.autograd.grad(output.sum(), z, retain_graph=True)
    return (grad[0].abs().sum(0) > 0).numpy()


@pytest.mark.parametrize("blocks", [1, 3])
def test_context_at_row_r_reads_rows_r_minus_blocks_to_r_within_blocks_columns(blocks: int) -> None:
    """Exactly: c[r, j] depends on z[r', j'] iff r - L <= r' <= r and |j' - j| <= L (L = blocks)."""
    torch.manual_seed(0)
    grid = 7
    context = MaskedContext(16, 16, blocks)
    z = torch.randn(1, 16, grid, grid, requires_grad=True)
    before_relu = context.blocks(z)
    for r in range(grid):
        for j in range(grid):
            rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
            expected = (rows <= r) & (rows >= r - blocks) & (abs(cols - j) <= blocks)
            assert np.array_equal(gradient_support(before_relu[0, :, r, j], z), expected), (r, j)


def test_no_prediction_reads_the_row_it_predicts_or_any_below() -> None:
    torch.manual_seed(0)
    head = CpcHead(8, CpcConfig(grid=5, max_offset=4, context_dim=8, context_blocks=5, target_dim=4))
    z = torch.randn(1, 8, 5, 5, requires_grad=True)
    for k, prediction in zip(head.offsets, head.predictions(z)):
        for r in range(5 - k):
            support = gradient_support(prediction[0, :, r], z)
            assert not support[r + 1:].any(), (k, r)  # in particular not row r + k, the target's
            assert support[r].any()


def global_batch() -> tuple[list[torch.Tensor], torch.Tensor]:
    """Predictions for offsets 1 and 2 and targets of 4 images on a 4x4 grid, as leaves."""
    generator = torch.Generator().manual_seed(0)
    predictions = [torch.randn(4, 3, 4 - k, 4, generator=generator, requires_grad=True) for k in (1, 2)]
    return predictions, torch.randn(4, 3, 4, 4, generator=generator, requires_grad=True)


def test_each_process_scores_its_patches_against_the_gathered_batch(monkeypatch) -> None:
    """Two processes of two images each, simulated in one: their mean loss and gradients are the one-process ones.

    The gather stands in for all_gather_with_grad (its cross-process gradients
    are checked with SimCLR's loss over two gloo processes): rank r's rows come
    r-th, and every rank's targets carry gradients, as they do across processes.
    """
    predictions, targets = global_batch()
    world = 2
    rows = [targets[2 * r:2 * r + 2].permute(0, 2, 3, 1).reshape(-1, 3) for r in range(world)]
    losses = []
    for rank in range(world):
        mine = slice(2 * rank, 2 * rank + 2)
        monkeypatch.setattr(cpc, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(cpc, "all_gather_with_grad",
                            lambda local, rank=rank: torch.cat([local if r == rank else rows[r] for r in range(world)]))
        losses.append(grid_info_nce([p[mine] for p in predictions], targets[mine], (1, 2)))
    leaves = [*predictions, targets]
    # DDP averages gradients over processes: the global gradient is that of the mean loss
    per_process = torch.autograd.grad(sum(losses) / world, leaves)
    monkeypatch.undo()
    whole = grid_info_nce(predictions, targets, (1, 2))
    assert float(sum(losses).detach() / world) == pytest.approx(float(whole.detach()), rel=1e-6)
    for got, expected in zip(per_process, torch.autograd.grad(whole, leaves)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("size", "expected"), [(256, (64, 32, 256)), (224, (56, 28, 224)), (32, (8, 4, 32)),
                                                (96, (24, 12, 96))])
def test_the_grid_scales_with_the_input_size(size: int, expected: tuple[int, int, int]) -> None:
    assert patch_geometry(CpcConfig(), size) == expected


def test_patches_are_the_image_cut_row_by_row() -> None:
    image = torch.arange(3 * 32 * 32, dtype=torch.float32).view(3, 32, 32)
    patches = cut_patches(image, 8, 4)
    assert patches.shape == (49, 3, 8, 8)
    for r in range(7):
        for c in range(7):
            assert torch.equal(patches[7 * r + c], image[:, 4 * r:4 * r + 8, 4 * c:4 * c + 8])


def test_patch_augmentation_keeps_one_channel_and_shifts_at_most_the_jitter() -> None:
    patches = torch.rand(200, 3, 16, 16, generator=torch.Generator().manual_seed(1)) + 1  # no zeros of their own
    torch.manual_seed(0)
    out = augment_patches(patches, jitter=2)
    assert out.shape == patches.shape
    assert ((out != 0).flatten(2).any(2).sum(1) == 1).all()  # one colour channel left per patch
    assert (out[:, :, 1:15, 1:15] != 0).any(1).all()  # the 14 px window always lands inside the patch
    torch.manual_seed(0)
    assert torch.equal(augment_patches(patches, jitter=2), out)


def test_views_give_a_grid_of_patches_per_image_and_resnet18_takes_8_px_patches() -> None:
    from PIL import Image
    config = build_config(CpcConfig, {}, owner="cpc")
    views = PatchGrid(config, InputSpec(32, (0.5,) * 3, (0.25,) * 3))
    patches = views(Image.new("RGB", (28, 28), (200, 100, 50)))
    assert patches.shape == (49, 3, 8, 8)
    trunk = build_seeded("resnet18", seed=0)  # ImageNet stem: 8 px -> 4 -> 2 -> 2 -> 1 -> 1 -> 1
    assert trunk.forward_taps(patches[:2], ["res5"])["res5"].shape == (2, 512, 1, 1)


def test_bad_offsets_are_refused() -> None:
    with pytest.raises(SslBenchError, match="max_offset"):
        build_config(CpcConfig, {"max_offset": "7"}, owner="recipe 'cpc'")
