"""ResNet trunks in torchvision's layout (no fc), with taps conv1, res2..res5 and res5avg."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchvision
from torch import nn

from benchmark.registry import ARCHS
from checkpoints.models import Backbone, Stage, Tap

class ResNetBackbone(Backbone):
    """torchvision's ResNet trunk: state-dict keys conv1.*, bn1.*, layer1..layer4.* exactly as torchvision."""

    default_taps = ("conv1", "res2", "res3", "res4", "res5")

    def __init__(self, make: Callable[..., torchvision.models.ResNet], cifar_stem: bool = False,
                 stride_in_1x1: bool = False) -> None:
        super().__init__()
        net = make(weights=None)
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()
        if stride_in_1x1:
            _move_stride_to_1x1(net)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.input_size = 32 if cifar_stem else 224
        stem_stride = 1 if cifar_stem else 2
        pool_stride = 1 if cifar_stem else 2
        widths = [_out_channels(layer) for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]
        strides = [stem_stride * pool_stride * 2 ** i for i in range(4)]
        self.taps = (Tap("conv1", self.bn1.num_features, stem_stride),
                     *(Tap(f"res{i + 2}", w, s) for i, (w, s) in enumerate(zip(widths, strides))),
                     Tap("res5avg", widths[-1], 0))

    def stages(self) -> Sequence[Stage]:
        return (lambda x: self.relu(self.bn1(self.conv1(x))),
                lambda x: self.layer1(self.maxpool(x)),
                self.layer2, self.layer3, self.layer4,
                lambda x: torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _out_channels(layer: nn.Sequential) -> int:
    block = layer[-1]
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_bn.num_features


def _move_stride_to_1x1(net: torchvision.models.ResNet) -> None:
    """Caffe2/MSRA layout (detectron2 STRIDE_IN_1X1): a downsampling bottleneck strides in its 1x1 conv.

    A no-op for basic blocks, whose first conv carries the stride in both layouts.
    """
    for layer in (net.layer2, net.layer3, net.layer4):
        block = layer[0]
        if hasattr(block, "conv3"):
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)


@ARCHS.register("resnet18")
def resnet18(stride_in_1x1: bool = False) -> Backbone:
    """ResNet-18 (torchvision layout), 224 px."""
    return ResNetBackbone(torchvision.models.resnet18, stride_in_1x1=stride_in_1x1)


@ARCHS.register("resnet50")
def resnet50(stride_in_1x1: bool = False) -> Backbone:
    """ResNet-50 (torchvision layout), 224 px."""
    return ResNetBackbone(torchvision.models.resnet50, stride_in_1x1=stride_in_1x1)


@ARCHS.register("resnet101")
def resnet101(stride_in_1x1: bool = False) -> Backbone:
    """ResNet-101 (torchvision layout), 224 px."""
    return ResNetBackbone(torchvision.models.resnet101, stride_in_1x1=stride_in_1x1)


@ARCHS.register("resnet152")
def resnet152(stride_in_1x1: bool = False) -> Backbone:
    """ResNet-152 (torchvision layout), 224 px."""
    return ResNetBackbone(torchvision.models.resnet152, stride_in_1x1=stride_in_1x1)


@ARCHS.register("resnet18_cifar")
def resnet18_cifar(stride_in_1x1: bool = False) -> Backbone:
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool, 32 px."""
    return ResNetBackbone(torchvision.models.resnet18, cifar_stem=True, stride_in_1x1=stride_in_1x1)


@ARCHS.register("resnet50_cifar")
def resnet50_cifar(stride_in_1x1: bool = False) -> Backbone:
    """ResNet-50 with a 3x3 stride-1 stem and no max-pool, 32 px."""
    return ResNetBackbone(torchvision.models.resnet50, cifar_stem=True, stride_in_1x1=stride_in_1x1)
