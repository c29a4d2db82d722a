"""ResNet-18 with the CIFAR stem (3x3 stem conv, no max-pool), base width configurable.

Width 64 is the standard 11.2M-parameter model. Residual coupling: the stem and every block of a
stage add into one residual stream, so they share the stage's output-channel group; each block's
inner channels (after its first conv) are a group of their own.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from msfusion_core.method.split_map import layer_split_map
from msfusion_core.models.registry import FamilySpec, make_family

STAGES = (1, 2, 3, 4)
BLOCKS_PER_STAGE = 2


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes_in = width
        for s in STAGES:
            planes = width * 2 ** (s - 1)
            blocks = [
                BasicBlock(planes_in if b == 0 else planes, planes, 2 if (s > 1 and b == 0) else 1)
                for b in range(BLOCKS_PER_STAGE)
            ]
            self.add_module(f"layer{s}", nn.Sequential(*blocks))
            planes_in = planes
        self.fc = nn.Linear(planes_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, 32, 32]
        out = torch.relu(self.bn1(self.conv1(x)))  # [B, w, 32, 32]
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # [B, 8w, 4, 4]
        out = out.mean(dim=(2, 3))  # [B, 8w]  (the representation z)
        return self.fc(out)


def resnet18_split_map(model: ResNet18) -> dict:
    layers: dict[str, tuple] = {"conv1": ("stage1", None), "bn1": ("stage1", None)}
    for s in STAGES:
        for b in range(BLOCKS_PER_STAGE):
            p, stage_in = f"layer{s}.{b}", f"stage{s - 1 if b == 0 and s > 1 else s}"
            inner = f"{p}.inner"
            layers |= {
                f"{p}.conv1": (inner, stage_in),
                f"{p}.bn1": (inner, None),
                f"{p}.conv2": (f"stage{s}", inner),
                f"{p}.bn2": (f"stage{s}", None),
            }
            if len(model.get_submodule(f"{p}.shortcut")):
                layers |= {f"{p}.shortcut.0": (f"stage{s}", stage_in), f"{p}.shortcut.1": (f"stage{s}", None)}
    layers["fc"] = (None, "stage4")
    return layer_split_map(model, layers)


RESNET18 = FamilySpec(
    "resnet18",
    ("cifar10",),
    lambda classes, width, layers: make_family("resnet18", partial(ResNet18, classes, width or 64), resnet18_split_map, "fc"),
)
