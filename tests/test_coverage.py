"""Cumulative weight coverage (`msfusion_core.method.coverage`) on plans small enough to count by hand."""

import math

import numpy as np
import pytest
from torch import nn

from msfusion_core.method.coverage import TrainCounts
from msfusion_core.method.planner import ParticipantPlan, Window
from msfusion_core.method.slicing import Slicer
from msfusion_core.method.split_map import layer_split_map


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 4, bias=False)  # weight [4, 2]: rows are group h
        self.b = nn.Linear(4, 1, bias=False)  # weight [1, 4]: columns are group h


def counts() -> TrainCounts:
    model = TwoLayer()
    split = layer_split_map(model, {"a": ("h", None), "b": (None, "h")})
    return TrainCounts(Slicer(split), {k: tuple(p.shape) for k, p in model.named_parameters()})


def plan(node: int, start: int, length: int) -> ParticipantPlan:
    return ParticipantPlan(node, length / 4, {"h": Window(start, length, 4)})


def test_never_trained_fraction_and_cv_by_hand():
    c = counts()
    assert c.summary()[0] == 1.0 and math.isnan(c.summary()[1])
    # Unit 0 and unit 1 of h: rows 0-1 of a (4 of its 8 weights), columns 0-1 of b (2 of 4).
    c.add([plan(0, 0, 2)])
    assert c.summary()[0] == pytest.approx(6 / 12)
    # A window that wraps (units 3, 0): unit 3 is new, unit 0 is trained twice.
    c.add([plan(1, 3, 2)])
    assert c.counts["a.weight"][:, 0].tolist() == [2, 1, 0, 1]
    assert c.counts["b.weight"][0].tolist() == [2, 1, 0, 1]
    assert c.summary()[0] == pytest.approx(3 / 12)
    flat = np.array([2, 2, 1, 1, 0, 0, 1, 1, 2, 1, 0, 1], dtype=float)
    assert c.summary()[1] == pytest.approx(flat.std() / flat.mean())


def test_whole_tensors_count_once_per_submodel_and_counts_resume():
    model = TwoLayer()
    split = layer_split_map(model, {"a": ("h", None)})  # b is not split: in every sub-model
    c = TrainCounts(Slicer(split), {k: tuple(p.shape) for k, p in model.named_parameters()})
    c.add([plan(0, 0, 1), plan(1, 1, 1)])
    assert c.counts["b.weight"].tolist() == [[2, 2, 2, 2]]
    again = TrainCounts(Slicer(split), {k: tuple(p.shape) for k, p in model.named_parameters()})
    again.load_state_dict(c.state_dict())
    assert all((again.counts[k] == c.counts[k]).all() for k in c.counts)
