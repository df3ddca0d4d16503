"""ViTs through timm: taps against timm's own forward, release layouts, position-embedding resampling, refusals."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import timm
import torch

from test_formats import assert_one_line_error

from benchmark.cli import main
from checkpoints.archs import vit as vit_module
from checkpoints.formats import inspect_checkpoint, load_checkpoint
from checkpoints.models import build_backbone, build_seeded
from protocols.detection import check_arch
from protocols.surface_normals import check_resnet

State = dict[str, torch.Tensor]


def timm_model(name: str) -> torch.nn.Module:
    """A seeded timm model with its 1000-class head, as timm saves it; non-trivial norms and biases."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith(("norm1.bias", "norm2.bias", "norm.bias", "cls_token")):
                value.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def deit_tiny() -> torch.nn.Module:
    return timm_model("deit_tiny_patch16_224")


@pytest.fixture(scope="module")
def vit_small() -> torch.nn.Module:
    return timm_model("vit_small_patch16_224")


def prefixed(state: State, prefix: str) -> State:
    return {prefix + k: v for k, v in state.items()}


@pytest.mark.parametrize("fixture, arch", [("deit_tiny", "deit_tiny_patch16"), ("vit_small", "vit_small_patch16")])
def test_timm_state_dict_loads_every_key_and_taps_equal_timm_forward(fixture, arch, request, tmp_path):
    reference = request.getfixturevalue(fixture)
    path = tmp_path / "timm.pth"
    torch.save(reference.state_dict(), path)
    loaded = load_checkpoint(str(path))
    assert (loaded.format, loaded.arch) == ("torchvision", arch)
    assert loaded.missing == [] and loaded.unexpected == []
    assert set(loaded.ignored) == {"head.weight", "head.bias"}
    x = torch.randn(2, 3, 224, 224)
    names = ["cls", "cls_last4", "cls_avgpool", "gap", "cls3", "patch3"]
    with torch.no_grad():
        ours = loaded.backbone.forward_taps(x, names)
        normed = reference.get_intermediate_layers(x, n=4, return_prefix_tokens=True, norm=True)
        raw = reference.get_intermediate_layers(x, n=[2, 11], return_prefix_tokens=True, norm=False)
    last_patches, last_prefix = normed[-1]
    torch.testing.assert_close(ours["cls"], last_prefix[:, 0])
    torch.testing.assert_close(ours["cls_last4"], torch.cat([prefix[:, 0] for _, prefix in normed], -1))
    interleaved = torch.stack((last_prefix[:, 0], last_patches.mean(1)), -1).reshape(2, -1)
    torch.testing.assert_close(ours["cls_avgpool"], interleaved)
    torch.testing.assert_close(ours["cls3"], raw[0][1][:, 0])
    torch.testing.assert_close(ours["patch3"], raw[0][0].mean(1))
    mean = raw[1][0].double().mean(1)
    gap = (mean - mean.mean(-1, keepdim=True)) / (mean.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(ours["gap"].double(), gap, atol=1e-5, rtol=1e-5)


def test_taps_are_named_and_documented_for_every_vit():
    model = build_backbone("deit_tiny_patch16")
    names = [tap.name for tap in model.taps]
    assert names[:4] == ["cls1", "patch1", "cls2", "patch2"] and names[-4:] == ["cls_last4", "cls_avgpool", "gap", "cls"]
    assert {tap.name: tap.channels for tap in model.taps if tap.name.startswith(("cls_", "gap"))} == {
        "cls_last4": 4 * 192, "cls_avgpool": 2 * 192, "gap": 192}
    assert all(tap.stride == 0 for tap in model.taps)
    for name in ("`cls{k}`", "`patch{k}`", "`cls`", "`cls_last4`", "`cls_avgpool`", "`gap`"):
        assert name in vit_module.__doc__


def test_a_deep_copy_reads_its_own_weights():
    model = build_seeded("deit_tiny_patch16", 0).eval()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.norm.bias.add_(1.0)
        x = torch.randn(1, 3, 224, 224)
        torch.testing.assert_close(twin.forward_taps(x, ["cls"])["cls"], model.forward_taps(x, ["cls"])["cls"] + 1.0)


def release_layouts(state: State) -> dict[str, tuple[str, object]]:
    """How DINO, MAE, iBOT, DeiT and timm lay out a ViT trunk (heads and decoders alongside)."""
    return {
        "dino": ("dino", {"teacher": {**prefixed(state, "backbone."), "head.mlp.0.weight": torch.ones(2)},
                          "student": prefixed({k: v + 1 for k, v in state.items()}, "module.backbone."),
                          "args": argparse.Namespace(arch="vit_small", patch_size=16), "epoch": 100}),
        "mae": ("torchvision", {"model": {**state, "decoder_embed.weight": torch.ones(2, 2),
                                          "mask_token": torch.zeros(1, 1, 2)}, "epoch": 799,
                                "args": argparse.Namespace(model="mae_vit_base_patch16")}),
        "ibot": ("torchvision", {"state_dict": {**state, "masked_embed": torch.zeros(state["cls_token"].shape[-1])}}),
        "deit": ("torchvision", {"model": {**state, "head.weight": torch.ones(1000, 2)}, "epoch": 300}),
        "timm": ("torchvision", state),
    }


@pytest.mark.parametrize("layout", ["dino", "mae", "ibot", "deit", "timm"])
def test_release_layouts_load_every_trunk_key(layout, deit_tiny, tmp_path):
    state = {k: v for k, v in deit_tiny.state_dict().items() if not k.startswith("head.")}
    expected_format, content = release_layouts(state)[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save(content, path)
    loaded = load_checkpoint(str(path))
    assert (loaded.format, loaded.arch) == (expected_format, "deit_tiny_patch16")
    assert sorted(loaded.matched) == sorted(state) and loaded.missing == [] and loaded.unexpected == []
    for key, value in loaded.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_moco_v3_vit_small_is_built_with_its_12_heads(vit_small, tmp_path):
    state = {k: v for k, v in vit_small.state_dict().items() if not k.startswith("head.")}
    path = tmp_path / "mocov3.pth"
    torch.save({"arch": "vit_small", "epoch": 300, "state_dict": {
        **prefixed(state, "module.base_encoder."), "module.base_encoder.head.0.weight": torch.ones(2, 2),
        **prefixed(state, "module.momentum_encoder."), "module.predictor.0.weight": torch.ones(2, 2)}}, path)
    loaded = load_checkpoint(str(path))
    assert (loaded.format, loaded.arch, loaded.missing, loaded.unexpected) == ("moco_v3", "vit_small_patch16", [], [])
    assert loaded.meta["num_heads"] == 12
    assert {block.attn.num_heads for block in loaded.backbone.blocks} == {12}


def test_deit_name_accepts_vit_weights_of_the_same_network(vit_small, tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(vit_small.state_dict(), path)
    assert load_checkpoint(str(path), arch="deit_small_patch16").arch == "deit_small_patch16"


def test_interpolation_keeps_the_native_output_and_resamples_otherwise():
    model = build_seeded("deit_tiny_patch16", 0).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = model.forward_taps(x, ["cls", "gap"])
        assert model.adapt_input(224) == {}
        after = model.forward_taps(x, ["cls", "gap"])
    for name in before:
        assert torch.equal(before[name], after[name])
    original = model.pos_embed.detach().clone()
    assert model.adapt_input(64) == {"pos_embed_resized": "14x14 -> 4x4 patches (bicubic, for 64 px)"}
    assert torch.equal(model.pos_embed[:, :1], original[:, :1])
    grid = original[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2).double()
    expected = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", antialias=True)
    torch.testing.assert_close(model.pos_embed[:, 1:].double(), expected.permute(0, 2, 3, 1).reshape(1, 16, -1),
                               atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert model.forward_taps(torch.randn(1, 3, 64, 64), ["cls"])["cls"].shape == (1, 192)


def test_checkpoint_trained_at_another_size_builds_at_that_size(deit_tiny, tmp_path):
    model = build_seeded("deit_tiny_patch16", 0)
    model.adapt_input(64)
    path = tmp_path / "at64.pth"
    torch.save(model.state_dict(), path)
    loaded = load_checkpoint(str(path))
    assert loaded.missing == [] and loaded.backbone.input_size == 64
    assert torch.equal(loaded.backbone.pos_embed, model.pos_embed)


def fake_vit(patch: int, width: int, depth: int) -> State:
    state = {"cls_token": torch.zeros(1, 1, width), "patch_embed.proj.weight": torch.zeros(width, 3, patch, patch)}
    state.update({f"blocks.{i}.norm1.weight": torch.ones(width) for i in range(depth)})
    return state


@pytest.mark.parametrize("state, arch, fragments", [
    (fake_vit(16, 384, 12), "resnet50", ["vit_small_patch16 weights", "--arch resnet50"]),
    (fake_vit(8, 384, 12), "vit_small_patch16", ["vit_small_patch8 weights", "--arch vit_small_patch16"]),
    (fake_vit(16, 384, 6), "vit_small_patch16", ["vit(patch=16, width=384, depth=6)", "--arch vit_small_patch16"]),
])
def test_vit_of_another_arch_is_refused_naming_both(state, arch, fragments, tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    assert_one_line_error(lambda: load_checkpoint(str(path), arch=arch), *fragments)
    assert inspect_checkpoint(str(path), arch=arch)["verdict"].startswith("would be refused: ")


def test_resnet_checkpoint_with_a_vit_arch_is_refused_naming_both(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(build_backbone("resnet18").state_dict(), path)
    assert_one_line_error(lambda: load_checkpoint(str(path), arch="vit_base_patch16"), "resnet18 weights",
                    "--arch vit_base_patch16")


def test_image_size_not_a_multiple_of_the_patch_is_one_line():
    model = build_backbone("vit_small_patch8")
    assert_one_line_error(lambda: model.adapt_input(60), "vit_small_patch8", "60 px", "multiple of 8")


def test_detection_and_surface_normals_refuse_a_vit():
    assert_one_line_error(lambda: check_arch("vit_small_patch16"), "vit_small_patch16")
    trunk = build_backbone("deit_tiny_patch16")
    assert_one_line_error(lambda: check_resnet(trunk), "surface_normals needs a ResNet trunk", "deit_tiny_patch16")


def test_knn_on_a_tiny_vit_through_the_cli(tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["run", "--checkpoint", "random:deit_tiny_patch16", "--protocol", "knn", "--dataset",
                 "fashion_mnist", "--limit", "40", "--taps", "cls,gap,cls_last4", "--results", str(results),
                 "--workers", "0", "--set", "ks=1,3", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads(out)
    assert sorted(record["metrics"]) == ["cls", "cls_last4", "gap"]
    assert record["preprocessing"]["size"] == 32
    assert record["checkpoint"]["meta"]["pos_embed_resized"] == "14x14 -> 2x2 patches (bicubic, for 32 px)"
    assert all(0 <= value <= 100 for values in record["metrics"].values() for value in values.values())
