"""A residual CNN for CIFAR-10 whose two stages are stacks of identical residual blocks: the family
for depth windows on images (issue "Depth windows"), at about the compact CNN's cost per image.

stem conv (w) → pool → stage 1: L blocks of w channels at 16x16 → conv (2w) → pool → stage 2: L
blocks of 2w channels at 8x8 → GAP → fc. A block adds ``bn2(conv2(relu(bn1(conv1(relu(x))))))`` to
its input and nothing else, so the stream between blocks is a pure residual stream, and a block's
branch ends in ``bn2``: scaling its weight and bias scales the branch.

Width groups as ResNet-18's: every block of a stage writes into the stage's channel group; each
block's inner channels are a group of their own. Depth: each stage is a stack of ``Blocks``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from msfusion_core.method.split_map import Blocks, layer_split_map
from msfusion_core.models.registry import FamilySpec, make_family


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] → same
        return x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(torch.relu(x))))))


class ResidualCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16, blocks: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.stage1 = nn.ModuleList([ResidualBlock(width) for _ in range(blocks)])
        self.down = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.down_bn = nn.BatchNorm2d(2 * width)
        self.stage2 = nn.ModuleList([ResidualBlock(2 * width) for _ in range(blocks)])
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, 32, 32]
        h = F.max_pool2d(torch.relu(self.stem_bn(self.stem(x))), 2)  # [B, w, 16, 16]
        for block in self.stage1:
            h = block(h)
        h = F.max_pool2d(torch.relu(self.down_bn(self.down(h))), 2)  # [B, 2w, 8, 8]
        for block in self.stage2:
            h = block(h)
        z = torch.relu(h).mean(dim=(2, 3))  # [B, 2w]  (the representation z)
        return self.fc(z)


def residual_cnn_split_map(model: ResidualCNN) -> dict:
    layers: dict[str, tuple] = {"stem": ("s1", None), "stem_bn": ("s1", None), "down": ("s2", "s1"), "down_bn": ("s2", None), "fc": (None, "s2")}
    for s, stage in ((1, model.stage1), (2, model.stage2)):
        for b in range(len(stage)):
            p, inner = f"stage{s}.{b}", f"s{s}.b{b}.inner"
            layers |= {f"{p}.conv1": (inner, f"s{s}"), f"{p}.bn1": (inner, None), f"{p}.conv2": (f"s{s}", inner), f"{p}.bn2": (f"s{s}", None)}
    branch_end = Blocks(("bn2.weight", "bn2.bias"))
    return layer_split_map(model, layers) | {"stage1": branch_end, "stage2": branch_end}


RESCNN = FamilySpec(
    "rescnn",
    ("cifar10",),
    lambda classes, width, layers: make_family(
        "rescnn", partial(ResidualCNN, classes, width or 16, layers or 4), residual_cnn_split_map, "fc"
    ),
)
