"""Fully connected models: LeNet-300-100 (MNIST) and the residual MLP for MNIST-1D.

Both flatten each sample, so they take any input shape: `in_features = prod(input_shape)`.
Initialisation is torch's default for `nn.Linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_classes, flat_features


class LeNet300100(nn.Module):
    """LeNet-300-100 (LeCun et al. 1998; the MNIST MLP of Frankle & Carbin 2019):
    flatten, `fc1` in→300, ReLU, `fc2` 300→100, ReLU, `fc3` 100→classes.

    Example:
        >>> model = LeNet300100(784, 10)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class MNIST1DMLP(nn.Module):
    """MLP for MNIST-1D (Greydanus 2020): flatten, `fc1` in→500, ReLU, `fc2` 500→500, ReLU
    plus a residual connection (h2 = relu(fc2(h1)) + h1), `fc3` 500→classes.

    Example:
        >>> model = MNIST1DMLP(40, 10)
        >>> model(torch.zeros(2, 40)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_features: int = 40, num_classes: int = 10, hidden: int = 500):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = F.relu(self.fc1(x.flatten(1)))
        h2 = F.relu(self.fc2(h1)) + h1
        return self.fc3(h2)


def lenet_300_100(num_classes: int, input_shape: tuple[int, ...]) -> LeNet300100:
    """LeNet-300-100 for samples of `input_shape` (flattened; MNIST is (1, 28, 28)).

    Example:
        >>> sum(p.numel() for p in lenet_300_100(10, (1, 28, 28)).parameters())
        266610
    """
    num_classes = check_classes("lenet_300_100", num_classes)
    return LeNet300100(flat_features("lenet_300_100", input_shape), num_classes)


def mnist1d_mlp(num_classes: int, input_shape: tuple[int, ...]) -> MNIST1DMLP:
    """The residual 500-500 MLP for samples of `input_shape` (flattened; MNIST-1D is (40,)).

    Example:
        >>> sum(p.numel() for p in mnist1d_mlp(10, (40,)).parameters())
        276010
    """
    num_classes = check_classes("mnist1d_mlp", num_classes)
    return MNIST1DMLP(flat_features("mnist1d_mlp", input_shape), num_classes)
