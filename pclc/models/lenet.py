"""LeNet-5 for 1x28x28 inputs (MNIST / Fashion-MNIST).

Paper "Experiments" section: LeNet-5 on MNIST-style data; layer sizes follow the official
repository's ``models/lenet5.py`` (conv 6@5x5 pad 2 so 28x28 behaves like the classic 32x32 input).
"""

from __future__ import annotations

import torch
from torch import nn

from pclc.models._registry import register_model


class LeNet5(nn.Module):
    """conv6@5x5(p2)-pool-conv16@5x5-pool-FC120-FC84-FC K; 61,706 params at K=10."""

    feature_dim = 84

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 6x14x14
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 16x5x5
            nn.Flatten(),  # 400
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(84, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate 84-d features (after the last ReLU)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("lenet5", in_channels=1, input_sizes=(28,))
def lenet5(num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **kwargs) -> LeNet5:
    return LeNet5(num_classes, in_channels, input_size, **kwargs)
