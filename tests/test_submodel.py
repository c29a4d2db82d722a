"""Real sub-models (SPEC §3): genuinely smaller, exact on the sub-network, r² cost for ResNet-18."""

import numpy as np
import pytest
import torch
from torch import nn

from msfusion_core.local.measure import count_flops, num_parameters
from msfusion_core.models import get_family
from msfusion_core.method.planner import make_planner
from msfusion_core.method.slicing import Slicer, flat_positions, map_previous
from msfusion_core.method.split_map import group_sizes, layer_split_map, model_shapes
from msfusion_core.method.submodel import build_submodel


def submodel_at(family, r, planner="msfusion", t=3, width=None):
    fam = get_family(family, width=width)
    torch.manual_seed(0)
    full = fam.build()
    gs = group_sizes(model_shapes(full), fam.split_map)
    plan = make_planner(planner).plan(t, [(1, r), (2, 1.0)], gs).participants[1]
    slicer = Slicer(fam.split_map)
    sub_state = slicer.extract(full.state_dict(), plan.unit_indices())
    return fam, full, build_submodel(fam.build, sub_state), plan, slicer


@pytest.mark.parametrize("r", [0.5, 0.25])
def test_resnet18_param_and_flop_fractions_near_r_squared(r):
    _fam, full, sub, _, _ = submodel_at("resnet18", r)
    x = torch.randn(2, 3, 32, 32)
    param_frac = num_parameters(sub) / num_parameters(full)
    flop_frac = count_flops(lambda: sub(x)) / count_flops(lambda: full(x))
    assert num_parameters(full) == 11_173_962  # the standard CIFAR ResNet-18
    assert abs(param_frac / r**2 - 1) < 0.03, param_frac
    assert abs(flop_frac / r**2 - 1) < 0.03, flop_frac


def test_submodel_is_genuinely_smaller_with_the_same_keys():
    _fam, full, sub, _plan, _ = submodel_at("resnet18", 0.5, width=16)
    assert list(sub.state_dict().keys()) == list(full.state_dict().keys())
    assert sub.layer3[0].conv1.out_channels == 32 and sub.layer3[0].conv1.weight.shape == (32, 16, 3, 3)
    assert sub.bn1.num_features == 8 and sub.fc.in_features == 64
    assert all(p.device.type == "cpu" for p in sub.parameters())


@pytest.mark.parametrize("family,planner", [("digits-cnn", "msfusion"), ("digits-cnn", "fd"), ("resnet18", "msfusion")])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_submodel_equals_full_model_zero_outside(family, planner, mode):
    fam, full, sub, plan, slicer = submodel_at(family, 0.5, planner, width=8 if family == "resnet18" else None)
    units = plan.unit_indices()
    # Zero every split parameter of the full model outside the sub-model's coordinates.
    zeroed = {}
    for k, v in full.state_dict().items():
        pos = slicer.flat_positions(k, v.shape, units)
        if pos is None or not v.is_floating_point() or k.endswith(("running_mean", "running_var")):
            zeroed[k] = v.clone()
            continue
        z = torch.zeros(v.numel(), dtype=v.dtype)
        z[pos] = v.reshape(-1)[pos]
        zeroed[k] = z.reshape(v.shape)
    full.load_state_dict(zeroed)
    sub = build_submodel(fam.build, slicer.extract(zeroed, units))
    getattr(full, mode)(), getattr(sub, mode)()
    x = torch.randn(4, *( (1, 8, 8) if family == "digits-cnn" else (3, 32, 32)))
    torch.testing.assert_close(sub(x), full(x), rtol=1e-4, atol=1e-5)


def test_build_rejects_wrong_keys():
    fam = get_family("digits-cnn")
    state = fam.build().state_dict()
    state.pop("fc.bias")
    with pytest.raises(ValueError, match="fc.bias"):
        build_submodel(fam.build, state)


def test_split_map_mismatch_names_parameter_and_dimension():
    fam = get_family("digits-cnn")
    shapes = model_shapes(fam.build())
    bad = dict(fam.split_map) | {"conv2.weight": ("c2", "c3", None, None)}
    with pytest.raises(ValueError, match=r"group 'c3' has K=32 \(from 'conv2\.weight' dim 1\)"):
        group_sizes(shapes, bad)
    with pytest.raises(ValueError, match="not a parameter"):
        group_sizes(shapes, dict(fam.split_map) | {"conv9.weight": ("c1",)})
    with pytest.raises(ValueError, match="2 dimension bindings"):
        group_sizes(shapes, dict(fam.split_map) | {"conv1.weight": ("c1", None)})
    with pytest.raises(ValueError, match="unknown model family"):
        get_family("vgg")


def test_map_previous_uses_own_values_where_units_overlap():
    split = {"w": ("a", "b")}
    slicer = Slicer(split)
    full = {"w": torch.arange(20.0).reshape(4, 5)}
    prev_units = {"a": np.array([0, 1]), "b": np.array([1, 2, 3])}
    new_units = {"a": np.array([1, 2]), "b": np.array([3, 4, 0])}
    prev = {"w": -slicer.extract(full, prev_units)["w"]}  # "trained" values: negated
    received = slicer.extract(full, new_units)
    mapped = map_previous(slicer, prev, prev_units, received, new_units)["w"]
    expected = received["w"].clone()
    expected[0, 0] = -full["w"][1, 3]  # row unit 1 and column unit 3 were in the previous sub-model
    torch.testing.assert_close(mapped, expected)


def test_flat_positions_match_index_select():
    t = torch.arange(2 * 5 * 3 * 4).reshape(2, 5, 3, 4)
    by_dim = {1: torch.tensor([4, 0, 2]), 3: torch.tensor([3, 1])}
    sub = t.index_select(1, by_dim[1]).index_select(3, by_dim[3])
    assert torch.equal(t.reshape(-1)[flat_positions(t.shape, by_dim)], sub.reshape(-1))
