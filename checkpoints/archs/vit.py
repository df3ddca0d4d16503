"""Vision Transformers through timm (ViT-S/B/L, DINO's patch-8 models, DeiT), state-dict keys exactly timm's.

Taps (all are (B, C) vectors, stride 0; k counts blocks from 1, L is the depth):

- `cls{k}`: the CLS token leaving block k (the residual stream, before the final norm).
- `patch{k}`: the mean of the patch tokens leaving block k (before the final norm).
- `cls_last4` (L >= 4): the normed CLS tokens of the last 4 blocks concatenated, 4C wide: DINO's
  linear evaluation of ViT-S (n_last_blocks=4).
- `cls_avgpool`: the normed last CLS token and the mean of the normed last patch tokens, interleaved as
  DINO's eval_linear.py does (n_last_blocks=1, avgpool_patchtokens, its ViT-B recipe), 2C wide.
- `gap`: MAE's global pool: the mean of the last block's patch tokens through a fresh LayerNorm
  (MAE's fc_norm at its init: no affine, eps 1e-6).
- `cls` (last, so kNN's default): the CLS token of the last block after the final norm: the usual
  readout (DINO's kNN and n_last_blocks=1 linear probe, MoCo v3, MAE's `--cls_token` linear probe).

The eval size may differ from the size the checkpoint was trained at: `adapt_input` resamples the
position embeddings (timm's bicubic resample) once and says so, for the record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from benchmark.errors import SslBenchError
from benchmark.registry import ARCHS
from checkpoints.models import Backbone, Tap


@dataclasses.dataclass(frozen=True)
class ViTShape:
    """What a ViT's state dict fixes: patch side, width and depth (heads are not in the keys)."""

    patch: int
    width: int
    depth: int

    def __str__(self) -> str:
        return f"vit(patch={self.patch}, width={self.width}, depth={self.depth})"


class ViTBackbone(Backbone, VisionTransformer):
    """timm's VisionTransformer without a head; forward_taps runs the blocks the asked taps need, once."""

    default_taps = ("cls", "gap")

    def __init__(self, shape: ViTShape, num_heads: int, img_size: int = 224) -> None:
        VisionTransformer.__init__(self, img_size=img_size, patch_size=shape.patch, embed_dim=shape.width,
                                   depth=shape.depth, num_heads=num_heads, num_classes=0)
        self.input_size = img_size
        width, last = shape.width, shape.depth
        self._blocks_needed = {name: k for k in range(1, last + 1) for name in (f"cls{k}", f"patch{k}")}
        self._blocks_needed.update({name: last for name in ("cls_last4", "cls_avgpool", "gap", "cls")
                                    if name != "cls_last4" or last >= 4})
        wide = {"cls_last4": 4 * width, "cls_avgpool": 2 * width}
        self.taps = tuple(Tap(name, wide.get(name, width), 0) for name in self._blocks_needed)

    def _readout(self, name: str, outs: list[torch.Tensor]) -> torch.Tensor:
        """Tap `name` from the outputs of the blocks run so far (see the module docstring)."""
        prefix = self.num_prefix_tokens
        if name == "cls":
            return self.norm(outs[-1])[:, 0]
        if name == "cls_last4":
            return torch.cat([self.norm(tokens)[:, 0] for tokens in outs[-4:]], -1)
        if name == "cls_avgpool":
            normed = self.norm(outs[-1])
            return torch.stack((normed[:, 0], normed[:, prefix:].mean(1)), -1).flatten(1)
        if name == "gap":
            return nn.functional.layer_norm(outs[-1][:, prefix:].mean(1), (outs[-1].shape[-1],), eps=1e-6)
        tokens = outs[self._blocks_needed[name] - 1]
        return tokens[:, 0] if name.startswith("cls") else tokens[:, prefix:].mean(1)

    def forward_taps(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        wanted = self.check_taps(names)
        if not wanted:
            return {}
        expected = tuple(self.patch_embed.img_size)
        if tuple(x.shape[-2:]) != expected:
            raise SslBenchError(f"{self.arch} is set for {expected[0]}x{expected[1]} px inputs but got "
                                f"{x.shape[-2]}x{x.shape[-1]}; call adapt_input() with the eval size first")
        depth = max(self._blocks_needed[name] for name in wanted)
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        outs = []
        for block in self.blocks[:depth]:
            x = block(x)
            outs.append(x)
        return {name: self._readout(name, outs) for name in wanted}

    def adapt_input(self, size: int) -> dict[str, Any]:
        patch = self.patch_embed.patch_size[0]
        if size % patch:
            raise SslBenchError(f"{self.arch} cuts images into {patch}x{patch} patches, but the eval size is {size} "
                                f"px, not a multiple of {patch}; use a dataset (or an arch) whose size divides by "
                                f"the patch size")
        old = tuple(self.patch_embed.grid_size)
        if size == self.patch_embed.img_size[0]:
            return {}
        self.set_input_size(img_size=(size, size))
        new = tuple(self.patch_embed.grid_size)
        return {"pos_embed_resized": f"{old[0]}x{old[1]} -> {new[0]}x{new[1]} patches (bicubic, for {size} px)"}


def shape_of(state: Mapping[str, torch.Tensor]) -> ViTShape | None:
    """The patch, width and depth a timm-named ViT state dict holds; None when it is not one."""
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4:
        return None
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    return ViTShape(proj.shape[-1], proj.shape[0], depth)


def infer_vit(state: Mapping[str, torch.Tensor]) -> str | None:
    """The registered ViT whose shape `state` has (ViT names before DeiT's), else a description of it."""
    shape = shape_of(state)
    if shape is None:
        return None
    names = [name for name in ARCHS.names("vit_*") + ARCHS.names("deit_*")
             if getattr(ARCHS.get(name), "network", None) == shape]
    name = names[0] if names else str(shape)
    return f"distilled {name}" if "dist_token" in state else name


def checkpoint_kwargs(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Build arguments a ViT state dict implies: the training size its position embeddings were made for."""
    shape, pos = shape_of(state), state.get("pos_embed")
    if shape is None or pos is None or pos.ndim != 3:
        return {}
    side = int(round((pos.shape[1] - 1) ** 0.5))
    return {"img_size": side * shape.patch} if side * side == pos.shape[1] - 1 and side * shape.patch != 224 else {}


def _register(name: str, shape: ViTShape, heads: int, doc: str) -> None:
    def build(img_size: int = 224, num_heads: int | None = None) -> Backbone:
        return ViTBackbone(shape, num_heads or heads, img_size)

    build.__doc__ = doc
    build.__name__ = build.__qualname__ = name
    build.network = shape  # type: ignore[attr-defined]  # archs with one network accept each other's weights
    ARCHS.register(name, build)


_register("vit_small_patch16", ViTShape(16, 384, 12), 6, "ViT-S/16 (timm vit_small_patch16_224; DINO, iBOT, MoCo v3), 224 px.")
_register("vit_small_patch8", ViTShape(8, 384, 12), 6, "ViT-S/8 (timm vit_small_patch8_224; DINO), 224 px.")
_register("vit_base_patch16", ViTShape(16, 768, 12), 12, "ViT-B/16 (timm vit_base_patch16_224; DINO, MAE, iBOT, MoCo v3), 224 px.")
_register("vit_base_patch8", ViTShape(8, 768, 12), 12, "ViT-B/8 (timm vit_base_patch8_224; DINO), 224 px.")
_register("vit_large_patch16", ViTShape(16, 1024, 24), 16, "ViT-L/16 (timm vit_large_patch16_224; MAE, iBOT), 224 px.")
_register("deit_tiny_patch16", ViTShape(16, 192, 12), 3, "DeiT-Ti/16 (timm deit_tiny_patch16_224), 224 px.")
_register("deit_small_patch16", ViTShape(16, 384, 12), 6, "DeiT-S/16 (timm deit_small_patch16_224), 224 px.")
_register("deit_base_patch16", ViTShape(16, 768, 12), 12, "DeiT-B/16 (timm deit_base_patch16_224), 224 px.")
