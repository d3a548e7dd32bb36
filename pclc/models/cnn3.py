"""3-conv-layer CNN, a substitute small model for 1x28x28 inputs.

The official repository's ``models/cnn3.py`` (the paper's black-box substitute), layer for layer:
conv16@5x5, conv32@5x5, pool, conv64@5x5, pool, FC100, FC K.
"""

from __future__ import annotations

import torch
from torch import nn

from pclc.models._registry import register_model


class CNN3(nn.Module):
    """28->24->20->pool 10->6->pool 3; flatten 64*3*3=576; 123,222 params at K=10."""

    feature_dim = 100

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 5),
            nn.ReLU(inplace=True),  # 16x24x24
            nn.Conv2d(16, 32, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 32x10x10
            nn.Conv2d(32, 64, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 64x3x3
            nn.Flatten(),  # 576
            nn.Linear(64 * 3 * 3, 100),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(100, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate 100-d features (after the ReLU)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("cnn3", in_channels=1, input_sizes=(28,))
def cnn3(num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **kwargs) -> CNN3:
    return CNN3(num_classes, in_channels, input_size, **kwargs)
