"""Context encoder: the masks cover exactly the configured region, and only masked pixels reach the loss."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from benchmark.config import build_config
from benchmark.errors import SslBenchError
from benchmark.protocol import InputSpec
from benchmark.registry import RECIPES
from checkpoints.models import build_seeded
from checkpoints.recipes.context_encoder import (ContextEncoderConfig, center_mask, masked_input, random_block_mask,
                                                 reconstruction_loss)


def test_center_mask_is_the_configured_square() -> None:
    mask = center_mask(32, 0.5)
    assert mask.shape == (1, 32, 32) and int(mask.sum()) == 16 * 16
    assert mask[0, 8:24, 8:24].eq(1).all() and mask.sum() == mask[0, 8:24, 8:24].sum()
    assert int(center_mask(128, 56 / 128)[0, 36:92, 36:92].sum()) == int(center_mask(128, 56 / 128).sum()) == 56 * 56


def test_views_mask_and_the_encoder_input_drops_exactly_the_region() -> None:
    recipe = RECIPES.get("context_encoder")()
    config = build_config(recipe.Config, {"mask_size": "0.25"}, owner="test")
    views = recipe.views(config, InputSpec(32, (0.5,) * 3, (0.25,) * 3), None)
    image, mask = views(Image.new("RGB", (28, 28), (200, 100, 50)))
    assert image.shape == (3, 32, 32) and torch.equal(mask, center_mask(32, 0.25))
    context = masked_input(image, mask)
    inside = mask.expand_as(image).bool()
    assert context[inside].eq(0).all() and torch.equal(context[~inside], image[~inside])


def test_random_blocks_cover_the_area_and_follow_the_seed() -> None:
    torch.manual_seed(5)
    first = random_block_mask(64, 0.25, 0.25)
    torch.manual_seed(5)
    assert torch.equal(first, random_block_mask(64, 0.25, 0.25))
    assert 0.25 <= float(first.mean()) < 0.25 + (16 * 16) / 64 ** 2
    assert set(first.unique().tolist()) <= {0.0, 1.0}


def test_the_loss_reads_only_masked_pixels() -> None:
    generator = torch.Generator().manual_seed(6)
    image = torch.randn(2, 3, 16, 16, generator=generator)
    prediction = torch.randn(2, 3, 16, 16, generator=generator, requires_grad=True)
    mask = center_mask(16, 0.5).expand(2, 1, 16, 16)
    loss = reconstruction_loss(prediction, image, mask)
    loss.backward()
    inside = mask.expand_as(image).bool()
    assert prediction.grad[~inside].eq(0).all() and prediction.grad[inside].ne(0).all()
    expected = (prediction.detach() - image)[inside].pow(2).mean()
    torch.testing.assert_close(loss.detach(), expected)
    changed = image.clone()
    changed[~inside] += 7
    assert float(reconstruction_loss(prediction.detach(), changed, mask)) == pytest.approx(loss.item())


def test_overlap_band_is_weighted_and_nothing_beyond_it() -> None:
    image = torch.zeros(1, 3, 16, 16)
    prediction = torch.ones(1, 3, 16, 16, requires_grad=True)
    mask = center_mask(16, 0.5)[None]  # rows and columns 4..11
    reconstruction_loss(prediction, image, mask, overlap=2, overlap_weight=10).backward()
    grad = prediction.grad[0, 0]
    band = torch.zeros(16, 16, dtype=torch.bool)
    band[2:14, 2:14] = True
    band[4:12, 4:12] = False
    assert grad[~band & ~mask[0, 0].bool()].eq(0).all()
    torch.testing.assert_close(grad[band], torch.full_like(grad[band], 10 * float(grad[6, 6])))


def test_masked_pixels_do_not_reach_the_encoder() -> None:
    recipe = RECIPES.get("context_encoder")()
    config = build_config(recipe.Config, {}, owner="test")
    torch.manual_seed(0)
    model = recipe.build(build_seeded("resnet18", seed=0), config, dataset_size=4)
    image = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    mask = center_mask(32, 0.5).expand(4, 1, 32, 32)
    changed = image + 5 * mask
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct(changed, mask), model.reconstruct(image, mask), rtol=0, atol=0)
        assert float(model((changed, mask), torch.arange(4))) != float(model((image, mask), torch.arange(4)))


def test_adversarial_term_is_refused_with_a_clear_error() -> None:
    assert ContextEncoderConfig().adversarial is False
    with pytest.raises(SslBenchError, match="adversarial term .* not implemented"):
        build_config(ContextEncoderConfig, {"adversarial": "true"}, owner="recipe 'context_encoder'")
