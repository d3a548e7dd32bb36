"""ResNet-56 for CIFAR-style inputs (He et al. 2016, Sec. 4.2).

Paper "Experiments" section: ResNet-56 on CIFAR-10/100 and Tiny-ImageNet. Layout is
the 6n+2 CIFAR ResNet with n=9: conv3x3(16), three stages of 9 BasicBlocks with widths
16/32/64, option-A (parameter-free) shortcuts, global average pool, FC 64->K, with
Kaiming-normal init as in the widely used CIFAR implementation (akamaster/pytorch_resnet_cifar10).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pclc.models._registry import register_model


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample spatially by 2 and zero-pad the new channels."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.pad = extra_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = ShortcutA(planes - in_planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """6n+2-layer CIFAR ResNet; features = 64-d global-average-pooled activations."""

    feature_dim = 64

    def __init__(self, depth: int = 56, num_classes: int = 10, in_channels: int = 3, input_size: int = 32):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        blocks: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(64, num_classes)
        for m in self.modules():  # Kaiming-normal init for conv and linear weights
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate 64-d features (global average pool of the last stage)."""
        return self.pool(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("resnet56", in_channels=3, input_sizes=(32, 64))
def resnet56(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, **kwargs) -> CifarResNet:
    return CifarResNet(56, num_classes, in_channels, input_size, **kwargs)
