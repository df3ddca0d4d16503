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
from checkpoints.recipes.context_encoder import (ContextEncoderConfig, adversarial_losses, center_mask, masked_input,
                                                 masked_region, random_block_mask, reconstruction_loss)


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


def test_adversarial_losses_match_the_float64_formula() -> None:
    generator = torch.Generator().manual_seed(8)
    real, fake, fixed = (torch.randn(6, generator=generator) * 3 for _ in range(3))
    disc, gen = adversarial_losses(real, fake, fixed)
    r, f, g = (t.double() for t in (real, fake, fixed))
    sigmoid = lambda t: 1 / (1 + torch.exp(-t))  # noqa: E731
    expected_disc = (-torch.log(sigmoid(r)) - torch.log(1 - sigmoid(f))).mean()
    expected_gen = -torch.log(sigmoid(g)).mean()
    torch.testing.assert_close(disc.double(), expected_disc, rtol=1e-6, atol=0)
    torch.testing.assert_close(gen.double(), expected_gen, rtol=1e-6, atol=0)


def test_adversarial_joint_loss_matches_the_float64_formula() -> None:
    recipe = RECIPES.get("context_encoder")()
    config = build_config(recipe.Config, {"adversarial": "true", "discriminator_width": "8"}, owner="test")
    assert (config.lambda_rec, config.lambda_adv) == (0.999, 0.001)
    torch.manual_seed(0)
    model = recipe.build(build_seeded("resnet18", seed=0), config, dataset_size=4).eval()
    image = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    mask = center_mask(32, 0.5).expand(4, 1, 32, 32)
    loss, parts = model((image, mask), torch.arange(4))
    prediction = model.reconstruct(image, mask).double()
    rec = ((prediction - image.double()).pow(2) * mask).sum() / (mask.sum() * 3)
    discriminator = model.discriminator.double()
    real_logit, fake_logit = discriminator(image.double()[..., 8:24, 8:24]), discriminator(prediction[..., 8:24, 8:24])
    disc = (torch.nn.functional.softplus(-real_logit) + torch.nn.functional.softplus(fake_logit)).mean()
    gen = torch.nn.functional.softplus(-fake_logit).mean()
    model.float()
    torch.testing.assert_close(parts["reconstruction"].double(), rec, rtol=1e-5, atol=0)
    torch.testing.assert_close(parts["discriminator"].double(), disc, rtol=1e-5, atol=0)
    torch.testing.assert_close(parts["generator"].double(), gen, rtol=1e-5, atol=0)
    torch.testing.assert_close(loss.double(), 0.999 * rec + 0.001 * gen + disc, rtol=1e-5, atol=0)


def test_adversarial_gradients_keep_the_two_players_apart() -> None:
    recipe = RECIPES.get("context_encoder")()
    config = build_config(recipe.Config, {"adversarial": "true", "discriminator_width": "8"}, owner="test")
    torch.manual_seed(0)
    model = recipe.build(build_seeded("resnet18", seed=0), config, dataset_size=4).eval()  # BN stats fixed
    image = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    mask = center_mask(32, 0.5).expand(4, 1, 32, 32)
    model((image, mask), torch.arange(4))[0].backward()
    joint = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    prediction = model.reconstruct(image, mask)
    fake = prediction[..., 8:24, 8:24]
    softplus = torch.nn.functional.softplus
    disc = (softplus(-model.discriminator(image[..., 8:24, 8:24])) + softplus(model.discriminator(fake.detach()))).mean()
    model.discriminator.requires_grad_(False)
    gen = softplus(-model.discriminator(fake)).mean()
    model.discriminator.requires_grad_(True)
    (disc + 0.999 * reconstruction_loss(prediction, image, mask) + 0.001 * gen).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(joint[name], p.grad, rtol=1e-4, atol=1e-8, msg=name)


def test_masked_region_is_the_centre_square_and_grows_tiny_regions() -> None:
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    mask = center_mask(32, 0.5).expand(2, 1, 32, 32)
    assert torch.equal(masked_region(images, mask), images[..., 8:24, 8:24])
    assert masked_region(images, center_mask(32, 0.1).expand(2, 1, 32, 32)).shape == (2, 3, 8, 8)
