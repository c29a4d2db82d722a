"""Measured cost: FLOPs with torch's FlopCounterMode (not estimated), parameters and bytes."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (multiply-add = 2) of everything ``fn`` runs, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def num_parameters(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> int:
    if isinstance(model_or_state, nn.Module):
        return sum(p.numel() for p in model_or_state.parameters())
    return sum(t.numel() for t in model_or_state.values())


def num_bytes(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def shape_signature(model: nn.Module) -> tuple:
    """Hashable description of a model's tensor shapes: the FLOP cache key."""
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())
