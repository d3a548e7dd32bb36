"""VGG-13 with BatchNorm for 3x32x32 (CIFAR) and 3x64x64 (Tiny-ImageNet) inputs.

Paper "Experiments" section: VGG-13 on CIFAR-10/100 and Tiny-ImageNet. Conv stack is
the standard VGG-13 cfg (Simonyan & Zisserman 2015) with BN as in torchvision's
vgg13_bn (conv bias kept). The classifier Dropout(0.5)-FC512-ReLU-FC K is the small
CIFAR-style head specified for this reproduction (after the official code).
"""

from __future__ import annotations

import torch
from torch import nn

from pclc.models._registry import register_model

# VGG-13 ("B") configuration; "M" = 2x2 max-pool.
VGG13_CFG = [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def _make_layers(cfg: list, in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(in_channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG-BN: conv stack, flatten (512 at 32x32, 2048 at 64x64), Dropout, FC512, ReLU, FC K."""

    feature_dim = 512

    def __init__(self, cfg: list, num_classes: int = 10, in_channels: int = 3, input_size: int = 32):
        super().__init__()
        if input_size % 32:
            raise ValueError(f"VGG needs input_size divisible by 32, got {input_size}")
        spatial = input_size // 32  # five 2x2 pools
        self.conv = _make_layers(cfg, in_channels)
        self.embed = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(512 * spatial * spatial, 512),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate 512-d features (after the classifier's ReLU)."""
        return self.embed(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("vgg13", in_channels=3, input_sizes=(32, 64))
def vgg13(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, **kwargs) -> VGG:
    return VGG(VGG13_CFG, num_classes, in_channels, input_size, **kwargs)
