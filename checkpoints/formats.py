"""Any checkpoint -> backbone weights, with a clear verdict.

A spec is a file, `random:ARCH` or `zoo:NAME`. Files are read only with
torch.load(weights_only=True) or safetensors, so nothing in them ever runs.
A format loader (registered by name in FORMATS) finds the trunk's state dict
inside the file and renames its keys to torchvision's; the result is matched
key by key against the backbone: missing keys, shape mismatches, NaN/Inf and
an architecture other than the one asked for are errors, each one line.
`--key`/`--prefix` point a loader at a trunk no layout knows.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import os
import re
import struct
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from benchmark.atomic import replacing
from benchmark.errors import SslBenchError, whole_sentences
from benchmark.filehash import sha256_file
from benchmark.registry import ARCHS, Registry
from checkpoints.models import Backbone, build_seeded

NATIVE_VERSION = 1
_SHOWN = 5  # keys named in one-line messages

# (bottleneck, blocks per layer) -> depth; used to tell ResNets apart by their keys.
_RESNET_DEPTHS = {(False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34, (True, (3, 4, 6, 3)): 50,
                  (True, (3, 4, 23, 3)): 101, (True, (3, 8, 36, 3)): 152}


@dataclasses.dataclass
class Extracted:
    """What a format loader found: trunk tensors under torchvision names, plus what it left aside."""

    state: dict[str, torch.Tensor]
    ignored: list[str] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    arch: str | None = None
    build_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


class FormatLoader:
    """Finds a trunk state dict in a loaded checkpoint; `priority` orders detection (low first)."""

    name: str
    priority: int
    description: str

    def detect(self, obj: Any) -> bool:
        raise NotImplementedError

    def extract(self, obj: Any) -> Extracted:
        raise NotImplementedError


FORMATS: Registry[FormatLoader] = Registry("checkpoint format")


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            return None
        obj = obj[key]
    return obj if isinstance(obj, Mapping) else None


def _same(key: str) -> str:
    return key


@dataclasses.dataclass(frozen=True)
class LayoutFormat(FormatLoader):
    """A trunk under one of `prefixes` inside one of `containers`, keys renamed by `rename`."""

    name: str
    priority: int
    description: str
    containers: tuple[tuple[str, ...], ...]
    prefixes: tuple[str, ...]
    markers: tuple[str, ...] = ("conv1.weight", "layer1.0.conv1.weight", "features.0.weight", "patch_embed.proj.weight")
    rename: Callable[[str], str] = _same

    def locate(self, obj: Any) -> tuple[Mapping[str, Any], str] | None:
        for path in self.containers:
            container = _dig(obj, path)
            if container is None:
                continue
            for prefix in self.prefixes:
                if any(prefix + marker in container for marker in self.markers):
                    return container, prefix
        return None

    def detect(self, obj: Any) -> bool:
        return self.locate(obj) is not None

    def extract(self, obj: Any) -> Extracted:
        found = self.locate(obj)
        assert found is not None, "extract() called on an object detect() rejects"
        container, prefix = found
        state: dict[str, torch.Tensor] = {}
        ignored: list[str] = []
        for key, value in container.items():
            if isinstance(key, str) and key.startswith(prefix) and isinstance(value, torch.Tensor):
                state[self.rename(key[len(prefix):])] = value
            else:
                ignored.append(str(key))
        return Extracted(state, ignored)


def _sequential_to_torchvision(key: str) -> str:
    """`nn.Sequential(*list(resnet.children())[:-1])` keys (0.weight, 4.1.conv1.weight) -> torchvision names."""
    head, _, rest = key.partition(".")
    names = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
    return f"{names[head]}.{rest}" if head in names else key


def _detectron2_to_torchvision(key: str) -> str:
    """detectron2 ResNet names (stem.conv1.norm.weight, res3.0.shortcut.weight) -> torchvision names."""
    parts = key.split(".")
    if parts[0] == "stem" and len(parts) > 2 and parts[1] == "conv1":
        return ".".join(["bn1", *parts[3:]] if parts[2] == "norm" else ["conv1", *parts[2:]])
    match = re.fullmatch(r"res([2-5])", parts[0])
    if not match or len(parts) < 4:
        return key
    layer, block, conv, rest = f"layer{int(match[1]) - 1}", parts[1], parts[2], parts[3:]
    norm = rest[0] == "norm"
    if conv == "shortcut":
        module = "downsample.1" if norm else "downsample.0"
    else:
        module = f"bn{conv[-1]}" if norm else conv
    return ".".join([layer, block, module, *(rest[1:] if norm else rest)])


class NativeFormat(FormatLoader):
    """ssl-bench's own files: {"ssl_bench": {"arch", "format_version", ...meta}, "state_dict": {...}}."""

    name = "native"
    priority = 0
    description = "a dict with 'ssl_bench' metadata (arch, format_version) and a torchvision-named 'state_dict'"

    def detect(self, obj: Any) -> bool:
        return _dig(obj, ("ssl_bench",)) is not None and _dig(obj, ("state_dict",)) is not None

    def extract(self, obj: Any) -> Extracted:
        header = dict(obj["ssl_bench"])
        version = header.pop("format_version", None)
        if version != NATIVE_VERSION:
            raise SslBenchError(f"ssl-bench checkpoint format_version {version!r} is not supported "
                                f"(this version reads {NATIVE_VERSION}); upgrade ssl-bench")
        arch = header.pop("arch", None)
        state = {k: v for k, v in obj["state_dict"].items() if isinstance(v, torch.Tensor)}
        ignored = [k for k, v in obj["state_dict"].items() if not isinstance(v, torch.Tensor)]
        return Extracted(state, ignored, meta=header, arch=arch)


# `__author__` of a detectron2 file (lower-case prefix) -> MODEL.RESNETS.STRIDE_IN_1X1 of the weights it holds:
# MSRA/Caffe2 (Detectron) ResNets put the stride in the 1x1 conv; torchvision ones, and MoCo's converter
# (whose detection configs set STRIDE_IN_1X1 False), in the 3x3.
_STRIDE_IN_1X1_BY_AUTHOR = {"msra": True, "caffe2": True, "detectron": True, "torchvision": False, "moco": False}
_STRIDE_HINT = ("--format detectron2_c2 (MSRA/Caffe2 weights, stride in the 1x1 conv: detectron2's R-50.pkl and "
                "models fine-tuned from it) or --format detectron2_torchvision (stride in the 3x3 conv: torchvision "
                "or MoCo-converted weights, configs with MODEL.RESNETS.STRIDE_IN_1X1 False)")


def _stride_in_1x1(obj: Any, forced: bool | None, fmt: str) -> tuple[bool, str]:
    """Where the bottleneck stride sits, and the evidence: the chosen format, else the file's `__author__`."""
    if forced is not None:
        return forced, f"--format {fmt}"
    author = str(obj.get("__author__", ""))
    for prefix, value in _STRIDE_IN_1X1_BY_AUTHOR.items():
        if author.lower().startswith(prefix):
            return value, f"__author__ {author!r}"
    said = f"its __author__ {author!r} is not one ssl-bench knows" if author else "it has no __author__"
    raise SslBenchError(f"a detectron2 checkpoint, but {said}, so where its ResNet puts the bottleneck "
                        f"stride is unknown; name it: {_STRIDE_HINT}")


class MocoV3Format(LayoutFormat):
    """MoCo v3: its ViT-S has 12 heads (timm's has 6), which the keys cannot show, so the build is told."""

    def extract(self, obj: Any) -> Extracted:
        extracted = super().extract(obj)
        proj = extracted.state.get("patch_embed.proj.weight")
        if proj is not None and proj.shape[0] == 384:
            extracted.build_kwargs = {"num_heads": 12}
            extracted.meta = {"num_heads": 12, "notes": ["MoCo v3 ViT-S built with its 12 attention heads "
                                                         "(moco-v3 vits.py), not timm's 6"]}
        return extracted


@dataclasses.dataclass(frozen=True)
class Detectron2Format(LayoutFormat):
    """detectron2 R50 (`model` dict, backbone.bottom_up./backbone./bare keys); STRIDE_IN_1X1 from evidence or forced."""

    stride_in_1x1: bool | None = None  # None: decide from the file's __author__, refuse without evidence

    def extract(self, obj: Any) -> Extracted:
        extracted = super().extract(obj)
        found = self.locate(obj)
        assert found is not None
        container, prefix = found
        if prefix == "backbone." and not any(k.startswith("layer4.") for k in extracted.state):
            res5 = "roi_heads.res5."  # R50-C4 models keep res5 in the box head
            moved = {k for k in extracted.ignored if k.startswith(res5)}
            extracted.state.update({_detectron2_to_torchvision("res5." + k[len(res5):]): container[k] for k in moved})
            extracted.ignored = [k for k in extracted.ignored if k not in moved]
        stride_in_1x1, evidence = _stride_in_1x1(obj, self.stride_in_1x1, self.name)
        where = "1x1" if stride_in_1x1 else "3x3"
        extracted.meta = {"stride_in_1x1": stride_in_1x1, "author": str(obj.get("__author__", "")) or None,
                          "notes": [f"detectron2 ResNet built with the bottleneck stride in the {where} conv "
                                    f"(from {evidence})"]}
        extracted.build_kwargs = {"stride_in_1x1": stride_in_1x1}
        return extracted


_PLAIN = ((), ("state_dict",), ("model",))

_BUILTIN_FORMATS: tuple[FormatLoader, ...] = (
    NativeFormat(),
    LayoutFormat("vissl", 10, "VISSL: classy_state_dict.base_model.model.trunk (or model_state_dict/trunk) "
                 "with '_feature_blocks.' keys",
                 (("classy_state_dict", "base_model", "model", "trunk"), ("model_state_dict",), ("trunk",), ()),
                 ("_feature_blocks.", "trunk._feature_blocks.")),
    LayoutFormat("moco", 20, "MoCo v1/v2: 'state_dict' with 'module.encoder_q.' keys",
                 (("state_dict",), ()), ("module.encoder_q.", "encoder_q.")),
    MocoV3Format("moco_v3", 20, "MoCo v3 (ResNet or ViT): 'state_dict' with 'module.base_encoder.' keys",
                 (("state_dict",), ()), ("module.base_encoder.", "base_encoder.")),
    LayoutFormat("dino", 20, "DINO: a 'teacher' dict with 'module.backbone.' or 'backbone.' keys",
                 (("teacher",),), ("module.backbone.", "backbone.")),
    LayoutFormat("dino_student", 21, "DINO: a 'student' dict with 'module.backbone.' or 'backbone.' keys",
                 (("student",),), ("module.backbone.", "backbone.")),
    *(Detectron2Format(name, 30 + i, "detectron2: 'model' dict with 'backbone.bottom_up.stem.conv1.weight', "
                       f"'backbone.stem...' or bare 'stem.conv1.weight' keys; {stride}",
                       (("model",), ()), ("backbone.bottom_up.", "backbone.", ""), ("stem.conv1.weight",),
                       _detectron2_to_torchvision, forced)
      for i, (name, forced, stride) in enumerate((
          ("detectron2", None, "stride placement from __author__"),
          ("detectron2_c2", True, "stride in the 1x1 conv (MSRA/Caffe2 weights)"),
          ("detectron2_torchvision", False, "stride in the 3x3 conv (torchvision/MoCo weights)")))),
    LayoutFormat("prefixed", 40, "BYOL / solo-learn / lightly / mmselfsup: trunk keys under 'backbone.', "
                 "'encoder.' or 'online_network.encoder.' (optionally in 'state_dict')",
                 _PLAIN, ("module.backbone.", "backbone.", "module.encoder.", "encoder.",
                          "online_network.encoder.", "online_encoder.net.")),
    LayoutFormat("sequential", 45, "a ResNet as nn.Sequential of its children: keys '0.weight', '4.0.conv1.weight' "
                 "under 'backbone.', 'encoder.' or 'online_network.encoder.' (PyTorch-BYOL: in "
                 "'online_network_state_dict')",
                 (*_PLAIN, ("online_network_state_dict",)), ("module.backbone.", "backbone.", "module.encoder.",
                                                             "encoder.", "online_network.encoder."),
                 ("0.weight",), _sequential_to_torchvision),
    LayoutFormat("lightning", 50, "PyTorch Lightning: 'state_dict' with the trunk under 'model.'",
                 (("state_dict",),), ("model.",)),
    LayoutFormat("torchvision", 100, "torchvision/timm state dict: 'conv1.weight', 'layer1.0...' or a ViT's "
                 "'patch_embed.proj.weight', 'blocks.0...' (optionally under 'module.', in 'state_dict' "
                 "(iBOT) or 'model' (MAE, DeiT))", _PLAIN, ("", "module.")),
)
for _loader in _BUILTIN_FORMATS:
    FORMATS.register(_loader.name, _loader)
FORMATS.register("timm", FORMATS.get("torchvision"))


# ---------------------------------------------------------------------------------------------- reading files


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len <= size - 8 and head[8:9] == b"{"


# Plain records training scripts save next to the weights (DINO, timm and torchvision-reference keep their
# argparse arguments); rebuilding one runs no code of the file's choosing.
SAFE_GLOBALS = [argparse.Namespace]


def read_checkpoint(path: Path) -> Any:
    """The checkpoint's content, read without running any code; SslBenchError for anything else."""
    if not path.exists():
        raise SslBenchError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise SslBenchError(f"checkpoint {path} is a directory, not a file; give the .pth/.pt/.safetensors file")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(16)
    if _is_safetensors(head, size):
        return _read_safetensors(path)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise SslBenchError(f"{path} is not a checkpoint (neither a torch.save file, a pickle nor safetensors)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it then refuses anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load raises many types for foreign files
        raise SslBenchError(_load_failure(path, error)) from None


def _load_failure(path: Path, error: Exception) -> str:
    text = str(error)
    needs = re.search(r"GLOBAL ([\w.]+)", text)
    if needs:
        return (f"refusing to load {path}: unpickling it would run code ({needs[1]}); ssl-bench reads weights only "
                f"(torch.load weights_only=True): re-save just the weights, e.g. torch.save(ckpt['teacher'], ...) for "
                f"DINO/iBOT, ckpt['model'] for MAE/DeiT, ckpt['state_dict'] for most others")
    if "Unsupported operand" in text:
        return (f"refusing to load {path}: it is a plain pickle, not a torch.save file, and cannot be read "
                f"without running code; re-save its tensors with torch.save")
    if "central directory" in text or "failed reading zip archive" in text:
        return (f"{path} is truncated or damaged: its zip archive ends before the index that torch.save writes "
                f"last ({path.stat().st_size} bytes); copy or download it again")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return f"{path} is not a readable checkpoint: {whole_sentences(first, 200)}"


def _read_safetensors(path: Path) -> Any:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SslBenchError(f"{path} is not a readable safetensors file: {reason[:200]}") from None
    if "arch" not in metadata:
        return tensors
    try:
        extra = json.loads(metadata.get("meta", "{}"))
        version = int(metadata.get("format_version", NATIVE_VERSION))
    except ValueError as error:
        raise SslBenchError(f"{path}: bad ssl-bench metadata in the safetensors header ({error})") from None
    trunk = {k: v for k, v in tensors.items() if not k.startswith("heads.")}
    heads = {k.removeprefix("heads."): v for k, v in tensors.items() if k.startswith("heads.")}
    return {"ssl_bench": {**extra, "arch": metadata["arch"], "format_version": version}, "state_dict": trunk,
            "heads": heads}


def _top_keys(obj: Any) -> str:
    keys = [str(k) for k in obj][:_SHOWN] if isinstance(obj, Mapping) else []
    return ", ".join(keys) + (", ..." if isinstance(obj, Mapping) and len(obj) > _SHOWN else "")


def _extract_with(loader: FormatLoader, obj: Any, source: str) -> Extracted:
    """loader.extract(obj), its refusals prefixed with the file they are about."""
    try:
        return loader.extract(obj)
    except SslBenchError as error:
        raise SslBenchError(f"{source}: {error}") from None


def _pointed(obj: Mapping[str, Any], fmt: str | None, key: str | None, prefix: str | None,
             source: str) -> FormatLoader:
    """The loader `--key`/`--prefix` describe: the named layout's renaming (timm/torchvision names by default)."""
    base = FORMATS.get(fmt or "torchvision")
    if not isinstance(base, LayoutFormat):
        raise SslBenchError(f"--key/--prefix cannot be combined with --format {fmt}; drop one of them")
    path = tuple(key.split(".")) if key and key not in obj else ((key,) if key else ())
    container = _dig(obj, path)
    if container is None:
        raise SslBenchError(f"{source} has no dict under --key {key} (its top-level keys: {_top_keys(obj)})")
    prefix = prefix or ""
    markers = tuple(k[len(prefix):] for k in container if isinstance(k, str) and k.startswith(prefix))
    if not markers:
        raise SslBenchError(f"no key under --key {key or '(top level)'} of {source} starts with --prefix '{prefix}' "
                            f"(its keys begin: {_top_keys(container)})")
    return dataclasses.replace(base, name=f"{base.name} (--key/--prefix)", containers=(path,),
                               prefixes=(prefix,), markers=markers)


def extract(obj: Any, fmt: str | None, source: str, key: str | None = None,
            prefix: str | None = None) -> tuple[FormatLoader, Extracted]:
    """Run the named format loader, or the first whose detect() accepts `obj`; key/prefix point at the trunk."""
    if not isinstance(obj, Mapping):
        raise SslBenchError(f"{source} holds a {type(obj).__name__}, not a dict of weights")
    if key is not None or prefix is not None:
        loader = _pointed(obj, fmt, key, prefix, source)
        return loader, loader.extract(obj)
    if fmt is not None:
        loader = FORMATS.get(fmt)
        if not loader.detect(obj):
            raise SslBenchError(f"{source} is not a '{fmt}' checkpoint: expected {loader.description}; "
                                f"its top-level keys: {_top_keys(obj)}")
        return loader, _extract_with(loader, obj, source)
    loaders = sorted((FORMATS.get(n) for n in FORMATS.names()), key=lambda ld: ld.priority)
    for loader in dict.fromkeys(loaders):
        if loader.detect(obj):
            return loader, _extract_with(loader, obj, source)
    raise SslBenchError(f"{source}: no known checkpoint layout (top-level keys: {_top_keys(obj)}); "
                        f"name one with --format ({', '.join(FORMATS.names())}) or point at the trunk with --key "
                        f"DICT and --prefix PREFIX")


# -------------------------------------------------------------------------------------------- architectures


def infer_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    """The architecture whose keys `state` has: alexnet, resnet{18,34,50,101,152}[_cifar], a wider ResNet-50
    (wide_resnet50_2, resnet50w2/w4), a timm ViT/DeiT (or a description of an unknown one), or None."""
    if "features.0.weight" in state:
        return "alexnet"
    if "patch_embed.proj.weight" in state:
        from checkpoints.archs.vit import infer_vit

        return infer_vit(state)
    blocks = []
    for i in range(1, 5):
        indices = {k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}
        blocks.append(len(indices))
    if not any(blocks):
        return None
    bottleneck = any(k.endswith(".conv3.weight") for k in state)
    depths = [depth for (neck, counts), depth in _RESNET_DEPTHS.items()
              if neck == bottleneck and all(b in (0, c) for b, c in zip(blocks, counts))]
    if len(depths) != 1:
        return None
    conv1 = state.get("conv1.weight")
    cifar = conv1 is not None and conv1.ndim == 4 and conv1.shape[-1] == 3
    return _resnet_name(depths[0], state, bottleneck) + ("_cifar" if cifar else "")


def _resnet_name(depth: int, state: Mapping[str, torch.Tensor], bottleneck: bool) -> str:
    """resnet{depth}, or its wider kinds: wide_resnet{depth}_2 (inner 3x3 width doubled), SimCLR's resnet{depth}w{k}."""
    stem, inner = state.get("conv1.weight"), state.get("layer1.0.conv1.weight")
    if stem is None or stem.ndim != 4 or inner is None:
        return f"resnet{depth}"
    if stem.shape[0] != 64:
        return f"resnet{depth}w{stem.shape[0] // 64}"
    return f"wide_resnet{depth}_2" if bottleneck and inner.shape[0] == 128 else f"resnet{depth}"


def _same_network(a: str, b: str) -> bool:
    """Two arch names for one network (vit_small_patch16 and deit_small_patch16) accept each other's weights."""
    if a == b:
        return True
    if a not in ARCHS or b not in ARCHS:
        return False
    network = getattr(ARCHS.get(a), "network", None)
    return network is not None and network == getattr(ARCHS.get(b), "network", None)


def _resolve_arch(detected: str | None, declared: str | None, requested: str | None, source: str) -> str:
    """The architecture to build; mismatches between file and request are errors naming both."""
    if requested:
        ARCHS.get(requested)
    known = declared or detected
    if requested and known and not _same_network(requested, known):
        how = "its ssl-bench metadata says" if declared else "its keys say"
        raise SslBenchError(f"{source} holds {known} weights ({how} so) but --arch {requested} was asked for; "
                            + (f"drop --arch or pass --arch {known}" if known in ARCHS
                               else "no architecture ssl-bench has is of that shape"))
    arch = requested or known
    if arch is None:
        raise SslBenchError(f"cannot tell the architecture of {source} from its keys; pass --arch "
                            f"({', '.join(ARCHS.names())})")
    if arch not in ARCHS:
        raise SslBenchError(f"{source} holds {arch} weights, an architecture ssl-bench does not have "
                            f"(available: {', '.join(ARCHS.names())})")
    return arch


# ------------------------------------------------------------------------------------------------ matching


@dataclasses.dataclass
class Match:
    """Key-by-key comparison of extracted tensors with a backbone's state dict."""

    matched: list[str]
    missing: list[str]
    unexpected: list[str]
    ignored: list[str]
    mismatched: list[str]
    nonfinite: list[str]


def match_state(backbone: Backbone, extracted: Extracted) -> Match:
    """Classify keys: trunk keys (same root module as a backbone key) match, mismatch or are unexpected."""
    expected = backbone.state_dict()
    roots = {k.split(".")[0] for k in expected}
    result = Match([], [], [], list(extracted.ignored), [], [])
    for key, value in extracted.state.items():
        if key.split(".")[0] not in roots:
            result.ignored.append(key)
        elif key not in expected:
            result.unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[key].shape):
            result.mismatched.append(key)
        else:
            result.matched.append(key)
            if value.is_floating_point() and not torch.isfinite(value).all():
                result.nonfinite.append(key)
    result.missing = [k for k in expected
                      if k not in extracted.state and not k.endswith("num_batches_tracked")]
    return result


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN]) + (", ..." if len(keys) > _SHOWN else "")


def _check(match: Match, extracted: Extracted, backbone: Backbone, source: str, allow_partial: bool) -> None:
    if match.mismatched:
        key = match.mismatched[0]
        raise SslBenchError(f"{source}: shape of '{key}' is {tuple(extracted.state[key].shape)} but {backbone.arch} "
                            f"needs {tuple(backbone.state_dict()[key].shape)} ({len(match.mismatched)} keys differ)")
    if match.nonfinite:
        raise SslBenchError(f"{source}: tensor '{match.nonfinite[0]}' holds NaN or Inf "
                            f"({len(match.nonfinite)} tensors affected); the checkpoint is corrupt")
    if not match.matched:
        raise SslBenchError(f"{source}: none of its {len(extracted.state)} tensors is a {backbone.arch} trunk weight "
                            f"(e.g. {_shown(sorted(extracted.state))})")
    if match.missing and not allow_partial:
        raise SslBenchError(f"{source}: missing {len(match.missing)} of {len(match.missing) + len(match.matched)} "
                            f"{backbone.arch} trunk keys ({_shown(match.missing)}); pass --allow-partial to keep "
                            f"those at their random init")


# --------------------------------------------------------------------------------------------------- loading


@dataclasses.dataclass
class LoadedCheckpoint:
    """A backbone (eval mode) with its weights' provenance and the key-matching verdict."""

    backbone: Backbone
    name: str
    path: str
    sha256: str
    format: str
    arch: str
    matched: list[str]
    missing: list[str]
    unexpected: list[str]
    meta: dict[str, Any]
    ignored: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """JSON-ready provenance for result records."""
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "format": self.format,
                "arch": self.arch, "matched_keys": len(self.matched), "missing_keys": len(self.missing),
                "unexpected_keys": len(self.unexpected), "ignored_keys": len(self.ignored), "meta": self.meta}


@dataclasses.dataclass
class _Source:
    name: str
    path: Path
    fmt: str | None
    arch: str | None
    meta: dict[str, Any]


@dataclasses.dataclass
class _Opened:
    """A checkpoint file read and its trunk extracted, before any architecture is built."""

    source: _Source
    loader: FormatLoader
    extracted: Extracted
    detected: str | None

    def build(self, arch: str, seed: int) -> Backbone:
        """`arch` built for these weights (a ViT at the size its position embeddings were trained for)."""
        builder, kwargs = ARCHS.get(arch), dict(self.extracted.build_kwargs)
        if getattr(builder, "network", None) is not None:
            from checkpoints.archs.vit import checkpoint_kwargs

            kwargs = {**checkpoint_kwargs(self.extracted.state), **kwargs}
        accepted = inspect.signature(builder).parameters  # inspect may build another family than the file's
        return build_seeded(arch, seed, **{k: v for k, v in kwargs.items() if k in accepted})


def _resolve_spec(spec: str, arch: str | None, fmt: str | None) -> _Source:
    if spec.startswith("zoo:"):
        from checkpoints import zoo

        entry = zoo.get(spec[len("zoo:"):])
        path = zoo.fetch(entry.name)
        return _Source(entry.name, path, fmt or entry.format, arch or entry.arch, entry.meta())
    path = Path(spec).expanduser()
    return _Source(path.stem, path, fmt, arch, {})


def _open(spec: str, arch: str | None, fmt: str | None, key: str | None, prefix: str | None) -> _Opened:
    source = _resolve_spec(spec, arch, fmt)
    loader, extracted = extract(read_checkpoint(source.path), source.fmt, str(source.path), key, prefix)
    return _Opened(source, loader, extracted, infer_arch(extracted.state))


def _random(arch: str, requested: str | None, seed: int) -> LoadedCheckpoint:
    if requested and requested != arch:
        raise SslBenchError(f"random:{arch} conflicts with --arch {requested}; use one of them")
    ARCHS.get(arch)
    backbone = build_seeded(arch, seed).eval()
    keys = [k for k in backbone.state_dict() if not k.endswith("num_batches_tracked")]
    digest = hashlib.sha256(f"random:{arch}:{seed}".encode()).hexdigest()
    return LoadedCheckpoint(backbone, f"random-{arch}", "", digest, "random", arch, keys, [], [],
                            {"init": "random", "seed": seed})


def load_checkpoint(spec: str, arch: str | None = None, allow_partial: bool = False, fmt: str | None = None,
                    seed: int = 0, key: str | None = None, prefix: str | None = None) -> LoadedCheckpoint:
    """A backbone holding the weights named by `spec` (file path, `random:ARCH` or `zoo:NAME`).

    `key` (a top-level key or a dotted path) and `prefix` point at a trunk inside the file no format knows.
    """
    if spec.startswith("random:"):
        return _random(spec[len("random:"):], arch, seed)
    opened = _open(spec, arch, fmt, key, prefix)
    source, loader, extracted = opened.source, opened.loader, opened.extracted
    arch = _resolve_arch(opened.detected, extracted.arch, source.arch, str(source.path))
    backbone = opened.build(arch, seed)
    match = match_state(backbone, extracted)
    _check(match, extracted, backbone, str(source.path), allow_partial)
    backbone.load_state_dict({k: extracted.state[k] for k in match.matched}, strict=False)
    backbone.eval()
    return LoadedCheckpoint(backbone, source.name, str(source.path), sha256_file(source.path), loader.name, arch,
                            match.matched, match.missing, match.unexpected,
                            {**source.meta, **extracted.meta}, match.ignored)


def inspect_checkpoint(spec: str, arch: str | None = None, fmt: str | None = None, key: str | None = None,
                       prefix: str | None = None) -> dict[str, Any]:
    """Format, architecture and key lists of a checkpoint, ending with the verdict `run` would reach.

    Partial or broken matches are reported, not raised: the verdict is "would load" or
    "would be refused: <the error run would print>".
    """
    if spec.startswith("random:"):
        loaded = _random(spec[len("random:"):], arch, 0)
        return {"name": loaded.name, "path": "", "sha256": loaded.sha256, "format": "random", "arch": loaded.arch,
                "detected_arch": loaded.arch, "matched": loaded.matched, "missing": [], "unexpected": [],
                "ignored": [], "shape_mismatch": [], "nonfinite": [], "meta": loaded.meta, "verdict": "would load"}
    opened = _open(spec, arch, fmt, key, prefix)
    source, extracted = opened.source, opened.extracted
    detected = extracted.arch or opened.detected
    if source.arch:
        ARCHS.get(source.arch)
    chosen = source.arch or _resolve_arch(detected, None, None, str(source.path))
    backbone = opened.build(chosen, 0)
    match = match_state(backbone, extracted)
    try:
        _resolve_arch(opened.detected, extracted.arch, source.arch, str(source.path))
        _check(match, extracted, backbone, str(source.path), allow_partial=False)
        verdict = "would load"
    except SslBenchError as refusal:
        verdict = f"would be refused: {refusal}"
    return {"name": source.name, "path": str(source.path), "sha256": sha256_file(source.path),
            "format": opened.loader.name, "arch": chosen, "detected_arch": detected or "unknown",
            "matched": match.matched, "missing": match.missing, "unexpected": match.unexpected,
            "ignored": match.ignored, "shape_mismatch": match.mismatched, "nonfinite": match.nonfinite,
            "meta": {**source.meta, **extracted.meta}, "verdict": verdict}


# ---------------------------------------------------------------------------------------------------- saving


def save_native(path: str | os.PathLike[str], backbone_state_dict: Mapping[str, torch.Tensor], arch: str,
                meta: Mapping[str, Any] | None = None, heads: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write an ssl-bench checkpoint (.pt/.pth, or .safetensors) atomically; `meta` must be JSON-ready.

    `heads` (a recipe's projector, predictor, queue...) are kept apart from the
    trunk: under "heads" in a .pth, as "heads."-prefixed tensors in a .safetensors.
    """
    path = Path(path)
    ARCHS.get(arch)
    meta = dict(meta or {})
    reserved = {"arch", "format_version"} & set(meta)
    if reserved:
        raise ValueError(f"meta may not set {sorted(reserved)}")
    json.dumps(meta)
    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone_state_dict.items()}
    with replacing(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            head_tensors = {f"heads.{k}": v.detach().cpu().contiguous() for k, v in (heads or {}).items()}
            save_file({k: v.clone() for k, v in {**tensors, **head_tensors}.items()}, tmp,
                      metadata={"arch": arch, "format_version": str(NATIVE_VERSION), "meta": json.dumps(meta)})
        else:
            torch.save({"ssl_bench": {**meta, "arch": arch, "format_version": NATIVE_VERSION},
                        "state_dict": tensors,
                        "heads": {k: v.detach().cpu().contiguous() for k, v in (heads or {}).items()}}, tmp)
    return path
