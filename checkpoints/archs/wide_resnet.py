"""Wider ResNet-50s in torchvision's layout: wide_resnet50_2 and SimCLR's width multipliers (resnet50w2, w4).

wide_resnet50_2 (Zagoruyko & Komodakis, torchvision) doubles only the bottleneck's inner 3x3 width;
SimCLR v1's resnet50w2/w4 multiply every width, stem included (64w stem, 2048w res5), as its
TF checkpoints converted to PyTorch (e.g. tonylins/simclr-converter) lay them out. Taps as ResNet-50.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from benchmark.registry import ARCHS
from checkpoints.archs.resnet import ResNetBackbone
from checkpoints.models import Backbone


def _width_multiplied(width: int) -> Callable[..., ResNet]:
    """A torchvision ResNet-50 builder with every channel count times `width`, initialised as torchvision does."""
    def make(weights: None = None) -> ResNet:
        net = ResNet(Bottleneck, [3, 4, 6, 3])
        net.inplanes = 64 * width
        net.conv1 = nn.Conv2d(3, 64 * width, kernel_size=7, stride=2, padding=3, bias=False)
        net.bn1 = nn.BatchNorm2d(64 * width)
        net.layer1 = net._make_layer(Bottleneck, 64 * width, 3)
        net.layer2 = net._make_layer(Bottleneck, 128 * width, 4, stride=2)
        net.layer3 = net._make_layer(Bottleneck, 256 * width, 6, stride=2)
        net.layer4 = net._make_layer(Bottleneck, 512 * width, 3, stride=2)
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        return net

    return make


@ARCHS.register("wide_resnet50_2")
def wide_resnet50_2(stride_in_1x1: bool = False) -> Backbone:
    """Wide ResNet-50-2 (torchvision layout, bottleneck inner width doubled), 224 px."""
    return ResNetBackbone(torchvision.models.wide_resnet50_2, stride_in_1x1=stride_in_1x1)


@ARCHS.register("resnet50w2")
def resnet50w2(stride_in_1x1: bool = False) -> Backbone:
    """SimCLR's ResNet-50 (2x): every width doubled, 4096-d res5, 224 px."""
    return ResNetBackbone(_width_multiplied(2), stride_in_1x1=stride_in_1x1)


@ARCHS.register("resnet50w4")
def resnet50w4(stride_in_1x1: bool = False) -> Backbone:
    """SimCLR's ResNet-50 (4x): every width quadrupled, 8192-d res5, 224 px."""
    return ResNetBackbone(_width_multiplied(4), stride_in_1x1=stride_in_1x1)
