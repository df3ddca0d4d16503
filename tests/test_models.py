"""Every registered architecture: tap shapes, early stopping, torchvision key names and outputs."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from benchmark.errors import SslBenchError
from benchmark.registry import ARCHS
from checkpoints.models import build_backbone, build_seeded

TORCHVISION = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50,
               "resnet18_cifar": torchvision.models.resnet18, "resnet50_cifar": torchvision.models.resnet50,
               "alexnet": torchvision.models.alexnet, "resnet101": torchvision.models.resnet101,
               "resnet152": torchvision.models.resnet152, "wide_resnet50_2": torchvision.models.wide_resnet50_2}
VITS = [name for name in ARCHS.names() if getattr(ARCHS.get(name), "network", None) is not None]
SIMCLR_WIDTHS = {"resnet50w2": 2, "resnet50w4": 4}
SMALL = {"resnet18", "resnet50", "resnet18_cifar", "resnet50_cifar", "alexnet", "deit_tiny_patch16"}
# Trunk parameter counts: torchvision's published num_params minus the classifier.
TRUNK_PARAMS = {"resnet18": 11689512 - (512 * 1000 + 1000), "resnet50": 25557032 - (2048 * 1000 + 1000),
                "alexnet": 61100840 - (9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000)}
# AlexNet at 64 px, by hand: conv 11/4 pad 2 -> 15, pool 3/2 -> 7, conv 5 pad 2 -> 7, pool -> 3, 3x3 convs -> 3.
ALEXNET_64 = {"conv1": (64, 15), "conv2": (192, 7), "conv3": (384, 3), "conv4": (256, 3), "conv5": (256, 3)}


def size_for(arch: str) -> int:
    return 32 if arch.endswith("_cifar") else 64


def test_registry_has_the_builtin_archs():
    assert {"resnet18", "resnet50", "resnet18_cifar", "resnet50_cifar", "alexnet", "resnet101", "resnet152",
            "wide_resnet50_2", "resnet50w2", "resnet50w4", "vit_small_patch16", "vit_small_patch8",
            "vit_base_patch16", "vit_base_patch8", "vit_large_patch16", "deit_tiny_patch16", "deit_small_patch16",
            "deit_base_patch16"} <= set(ARCHS.names())
    assert set(TORCHVISION) | set(VITS) | set(SIMCLR_WIDTHS) == set(ARCHS.names())


@pytest.mark.parametrize("arch", ARCHS.names())
def test_every_tap_has_its_declared_shape(arch):
    torch.manual_seed(0)
    device = torch.device("cpu" if arch in SMALL else "meta")  # big trunks: shapes only
    with device:
        model = build_backbone(arch).eval()
    assert model.arch == arch
    size = size_for(arch)
    model.adapt_input(size)
    names = [t.name for t in model.taps]
    assert set(model.default_taps) <= set(names)
    with torch.no_grad():
        out = model.forward_taps(torch.randn(2, 3, size, size, device=device), names)
    assert list(out) == names
    for tap in model.taps:
        x = out[tap.name]
        if tap.stride == 0:
            assert x.shape == (2, tap.channels)
        elif arch == "alexnet":
            channels, side = ALEXNET_64[tap.name]
            assert x.shape == (2, channels, side, side) and channels == tap.channels
        else:
            assert x.shape == (2, tap.channels, size // tap.stride, size // tap.stride)


@pytest.mark.parametrize("arch", sorted(TORCHVISION))
def test_state_dict_keys_are_torchvision_trunk_keys(arch):
    with torch.device("meta"):
        ours = build_backbone(arch).state_dict()
        theirs = TORCHVISION[arch](weights=None).state_dict()
    trunk = {k: v.shape for k, v in theirs.items() if not k.startswith(("fc.", "classifier."))}
    assert list(ours) == list(trunk)
    stem_differs = {"conv1.weight"} if arch.endswith("_cifar") else set()
    assert {k for k in trunk if ours[k].shape != trunk[k]} == stem_differs


@pytest.mark.parametrize("arch", sorted(SIMCLR_WIDTHS))
def test_simclr_widths_are_resnet50_with_every_width_multiplied(arch):
    width = SIMCLR_WIDTHS[arch]
    with torch.device("meta"):
        model, base = build_backbone(arch), build_backbone("resnet50")
    expected = {k: tuple(d * width if i < 2 and (k, i) != ("conv1.weight", 1) else d for i, d in enumerate(v.shape))
                for k, v in base.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert [t.channels for t in model.taps] == [c * width for c in (64, 256, 512, 1024, 2048, 2048)]


@pytest.mark.parametrize("arch", VITS)
def test_vit_keys_shapes_and_heads_are_timms(arch):
    with torch.device("meta"):
        ours = build_backbone(arch)
        theirs = timm.create_model(f"{arch}_224", pretrained=False, num_classes=0)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours.blocks[0].attn.num_heads == theirs.blocks[0].attn.num_heads


@pytest.mark.parametrize("arch", sorted(TRUNK_PARAMS))
def test_trunk_parameter_counts_match_torchvision_meta(arch):
    assert sum(p.numel() for p in build_backbone(arch).parameters()) == TRUNK_PARAMS[arch]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_res5avg_equals_torchvision_forward_without_fc(arch):
    torch.manual_seed(1)
    model = build_backbone(arch).eval()
    reference = TORCHVISION[arch](weights=None)
    reference.fc = torch.nn.Identity()
    reference.load_state_dict(model.state_dict())
    reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.forward_taps(x, ["res5avg"])["res5avg"], reference(x), atol=1e-5)


def test_alexnet_conv5_pooled_equals_torchvision_features():
    torch.manual_seed(2)
    model = build_backbone("alexnet").eval()
    reference = torchvision.models.alexnet(weights=None).eval()
    reference.features.load_state_dict(model.features.state_dict())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        conv5 = model.forward_taps(x, ["conv5"])["conv5"]
        assert torch.allclose(torch.nn.functional.max_pool2d(conv5, 3, 2), reference.features(x), atol=1e-5)


@pytest.mark.parametrize("arch, asked, run, skipped", [
    ("resnet18", ["res2"], ["conv1", "layer1"], ["layer2", "layer3", "layer4"]),
    ("resnet18", ["conv1"], ["conv1"], ["layer1", "layer2", "layer3", "layer4"]),
    ("resnet18_cifar", ["res4", "conv1"], ["layer3"], ["layer4"]),
    ("alexnet", ["conv2"], ["features.0", "features.3"], ["features.6", "features.8", "features.10"]),
    ("deit_tiny_patch16", ["patch2", "cls1"], ["blocks.0", "blocks.1"], ["blocks.2", "blocks.11", "norm"]),
])
def test_forward_stops_after_the_deepest_requested_tap(arch, asked, run, skipped):
    model = build_backbone(arch).eval()
    called: list[str] = []
    modules = dict(model.named_modules())
    for name in run + skipped:
        modules[name].register_forward_hook(lambda m, i, o, name=name: called.append(name))
    size = size_for(arch)
    model.adapt_input(size)
    with torch.no_grad():
        out = model.forward_taps(torch.randn(1, 3, size, size), asked)
    assert set(out) == set(asked)
    assert set(run) <= set(called)
    assert not set(skipped) & set(called)


def test_unknown_tap_and_empty_request():
    model = build_backbone("resnet18")
    with pytest.raises(SslBenchError, match="no tap 'res6'.*res5avg"):
        model.forward_taps(torch.randn(1, 3, 64, 64), ["res6"])
    assert model.forward_taps(torch.randn(1, 3, 64, 64), []) == {}


def test_declared_input_sizes_and_strides():
    assert build_backbone("resnet50").input_size == 224
    assert build_backbone("resnet18_cifar").input_size == 32
    assert build_backbone("alexnet").input_size == 227
    assert [t.stride for t in build_backbone("resnet18").taps] == [2, 4, 8, 16, 32, 0]
    assert [t.stride for t in build_backbone("resnet18_cifar").taps] == [1, 1, 2, 4, 8, 0]
    assert build_backbone("resnet18").default_taps == ("conv1", "res2", "res3", "res4", "res5")


def test_stride_in_1x1_moves_the_stride_but_keeps_keys_and_shapes():
    plain, msra = build_backbone("resnet50"), build_backbone("resnet50", stride_in_1x1=True)
    for layer in ("layer2", "layer3", "layer4"):
        block = getattr(msra, layer)[0]
        assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
        assert getattr(plain, layer)[0].conv2.stride == (2, 2)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in msra.state_dict().items()}
    with torch.no_grad():
        out = msra.eval().forward_taps(torch.randn(1, 3, 64, 64), ["res5"])
    assert out["res5"].shape == (1, 2048, 2, 2)


def test_build_seeded_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = build_seeded("resnet18", 0), build_seeded("resnet18", 0), build_seeded("resnet18", 1)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
