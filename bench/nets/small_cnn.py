"""A small convolutional network for the project's low-resolution datasets.

Sized so that training and certification run in minutes on a CPU: scikit-learn's 8x8 digits
(``digits_cnn``, one pooling stage) and 28x28 MNIST (``mnist_cnn``, two pooling stages). The
parameters live in named attributes, so the state-dict keys do not depend on ``pools``.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv3x3-ReLU, conv3x3-ReLU, 2x2 max-pool(s), linear-ReLU, linear.

    With ``pools=1`` the single pool follows the second conv; with ``pools=2`` a pool also
    follows the first conv, which keeps the hidden layer small on 28x28 inputs.
    """

    ACCEPTS_CHANNELS_LAST = True  # flattens with torch.flatten (bench.nets.memory_format)

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        num_classes: int = 10,
        width: int = 32,
        hidden: int = 128,
        pools: int = 1,
    ):
        super().__init__()
        if pools not in (1, 2):
            raise ValueError(f"pools must be 1 or 2, got {pools}")
        side = image_size
        for _ in range(pools):
            side //= 2
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for {pools} pooling stage(s)")
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.pools = pools
        self.fc1 = nn.Linear(width * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        if self.pools == 2:
            x = self.pool(x)
        x = self.pool(self.relu(self.conv2(x)))
        x = self.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)
