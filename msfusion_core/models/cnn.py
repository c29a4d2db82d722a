"""Small CNN for scikit-learn's 8x8 digits: the embedded offline default family."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from msfusion_core.method.split_map import layer_split_map
from msfusion_core.models.registry import FamilySpec, make_family


def add_conv_stack(model: nn.Module, in_channels: int, w: int) -> None:
    """conv1-bn1 (w), conv2-bn2 (2w), conv3-bn3 (4w): 3x3 convolutions, the two CNNs' shared trunk."""
    for i, (c_in, c_out) in enumerate([(in_channels, w), (w, 2 * w), (2 * w, 4 * w)], start=1):
        model.add_module(f"conv{i}", nn.Conv2d(c_in, c_out, 3, padding=1, bias=False))
        model.add_module(f"bn{i}", nn.BatchNorm2d(c_out))


# The trunk's width groups: every conv's output channels (and its BatchNorm) are a group.
CONV_STACK_GROUPS = {
    "conv1": ("c1", None),
    "bn1": ("c1", None),
    "conv2": ("c2", "c1"),
    "bn2": ("c2", None),
    "conv3": ("c3", "c2"),
    "bn3": ("c3", None),
}


class DigitsCNN(nn.Module):
    """conv(32)-conv(64)-pool-conv(128)-GAP-fc(256)-fc(classes); every hidden width is a group."""

    def __init__(self, num_classes: int = 10, width: int = 32, in_channels: int = 1) -> None:
        super().__init__()
        w = width
        add_conv_stack(self, in_channels, w)
        self.hidden = nn.Linear(4 * w, 8 * w)
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 1, 8, 8]
        x = torch.relu(self.bn1(self.conv1(x)))  # [B, w, 8, 8]
        x = torch.relu(self.bn2(self.conv2(x)))  # [B, 2w, 8, 8]
        x = nn.functional.max_pool2d(x, 2)  # [B, 2w, 4, 4]
        x = torch.relu(self.bn3(self.conv3(x)))  # [B, 4w, 4, 4]
        x = x.mean(dim=(2, 3))  # [B, 4w]
        x = torch.relu(self.hidden(x))  # [B, 8w]  (the representation z)
        return self.fc(x)  # [B, classes]


def digits_cnn_split_map(model: DigitsCNN) -> dict:
    return layer_split_map(model, CONV_STACK_GROUPS | {"hidden": ("h", "c3"), "fc": (None, "h")})


class CifarCNN(nn.Module):
    """conv(w)-pool-conv(2w)-pool-conv(4w)-GAP-fc(classes) for 32x32 RGB: C1's compact model.

    Pooling early keeps a full-width (w = 32) training step near 2,000 examples/s on 2 CPU cores,
    so a converged run fits in minutes; width 8 (r = 1/4) has 1/15 of its parameters.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        add_conv_stack(self, in_channels, width)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, 32, 32]
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)  # [B, w, 16, 16]
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)  # [B, 2w, 8, 8]
        x = torch.relu(self.bn3(self.conv3(x)))  # [B, 4w, 8, 8]
        return self.fc(x.mean(dim=(2, 3)))  # [B, 4w] (the representation z) → [B, classes]


def cifar_cnn_split_map(model: CifarCNN) -> dict:
    return layer_split_map(model, CONV_STACK_GROUPS | {"fc": (None, "c3")})


DIGITS_CNN = FamilySpec(
    "digits-cnn",
    ("digits",),
    lambda classes, width, layers: make_family("digits-cnn", partial(DigitsCNN, classes, width or 32), digits_cnn_split_map, "fc"),
)
CIFAR_CNN = FamilySpec(
    "cifar-cnn",
    ("cifar10",),
    lambda classes, width, layers: make_family("cifar-cnn", partial(CifarCNN, classes, width or 32), cifar_cnn_split_map, "fc"),
)
