"""AlexNet trunk in torchvision's layout (features.N.*), with taps conv1..conv5 after ReLU."""

from __future__ import annotations

from collections.abc import Sequence

import torchvision

from benchmark.registry import ARCHS
from checkpoints.models import Backbone, Stage, Tap

# (first, end) indices into torchvision's `features` for each tap; each slice ends after a ReLU.
_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))


class AlexNetBackbone(Backbone):
    """torchvision's AlexNet `features` (the classifier is dropped); 227 px input."""

    taps = (Tap("conv1", 64, 4), Tap("conv2", 192, 8), Tap("conv3", 384, 16), Tap("conv4", 256, 16),
            Tap("conv5", 256, 16))
    default_taps = ("conv1", "conv2", "conv3", "conv4", "conv5")
    input_size = 227

    def __init__(self) -> None:
        super().__init__()
        self.features = torchvision.models.alexnet(weights=None).features

    def stages(self) -> Sequence[Stage]:
        return tuple(self.features[first:end] for first, end in _SLICES)


@ARCHS.register("alexnet")
def alexnet() -> Backbone:
    """AlexNet (torchvision layout, 64-192-384-256-256 channels), 227 px."""
    return AlexNetBackbone()
