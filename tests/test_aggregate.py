"""Overlap-weighted aggregation (SPEC §3): identities, FedAvg equivalence, brute-force reference."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from msfusion_core.method.aggregate import Contribution, scatter_average
from msfusion_core.models import get_family
from msfusion_core.method.planner import make_planner
from msfusion_core.method.slicing import Slicer
from msfusion_core.method.split_map import group_sizes, model_shapes

TINY_SPLIT = {
    "0.weight": (("h", 2), None),  # 3 units of 2 rows each
    "0.bias": (("h", 2),),
    "1.weight": ("o", ("h", 2)),
    "1.bias": ("o",),
    "2.weight": (None, "o"),
}


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.Linear(6, 4), nn.Linear(4, 2))


def brute_force(state, contributions, split_map):
    """Per-element loop: the definition of the overlap-weighted average."""
    out = {}
    for name, theta in state.items():
        dims = split_map.get(name, (None,) * theta.ndim)
        res = theta.clone()
        for pos in itertools.product(*(range(s) for s in theta.shape)):
            num = den = 0.0
            for c in contributions:
                sub_pos = []
                for d, b in enumerate(dims):
                    if b is None:
                        sub_pos.append(pos[d])
                        continue
                    g, block = (b, 1) if isinstance(b, str) else b
                    units = list(c.units[g])
                    if pos[d] // block not in units:
                        break
                    sub_pos.append(units.index(pos[d] // block) * block + pos[d] % block)
                else:
                    num += c.weight * float(c.state[name][tuple(sub_pos)])
                    den += c.weight
            if den:
                res[pos] = num / den
        out[name] = res
    return out


def random_contributions(model, split_map, planner, participants, seed, t=1):
    gen = torch.Generator().manual_seed(seed)
    gs = group_sizes(model_shapes(model), split_map)
    plan = make_planner(planner, seed=seed).plan(t, participants, gs)
    slicer = Slicer(split_map)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    contribs = []
    for pp in plan.participants.values():
        sub = slicer.extract(state, pp.unit_indices())
        trained = {k: v + torch.randn(v.shape, generator=gen) for k, v in sub.items()}
        contribs.append(Contribution(pp.unit_indices(), trained, float(torch.randint(1, 50, (), generator=gen))))
    return state, contribs, slicer, plan


@given(
    seed=st.integers(0, 1000),
    planner=st.sampled_from(["msfusion", "fedrolex", "heterofl", "fd"]),
    caps=st.lists(st.sampled_from([0.25, 0.34, 0.5, 0.67, 1.0]), min_size=1, max_size=4),
    t=st.integers(0, 6),
)
@settings(max_examples=25, deadline=None)
def test_vectorised_equals_brute_force(seed, planner, caps, t):
    model = tiny_model()
    state, contribs, slicer, _ = random_contributions(model, TINY_SPLIT, planner, list(enumerate(caps)), seed, t)
    fast = scatter_average(state, contribs, slicer).state
    slow = brute_force(state, contribs, TINY_SPLIT)
    for k in state:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("planner", ["msfusion", "fedrolex", "fd", "heterofl"])
def test_returning_what_was_received_is_bit_identical(planner):
    fam = get_family("digits-cnn")
    model = fam.build()
    gs = group_sizes(model_shapes(model), fam.split_map)
    slicer = Slicer(fam.split_map)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    plan = make_planner(planner).plan(3, [(1, 0.5), (2, 0.25), (3, 1.0), (4, 0.5)], gs)
    contribs = [Contribution(p.unit_indices(), slicer.extract(state, p.unit_indices()), w) for p, w in zip(plan.participants.values(), (7, 13, 1, 101))]
    result = scatter_average(state, contribs, slicer)
    for k, v in state.items():
        assert torch.equal(result.state[k], v), k
    # No participant moved: d_t = Σ w‖Δ − Δ̄‖² / Σ w‖Δ‖² is 0/0 on the shared coordinates, which
    # scatter_average defines as nan (never 0, which would read as perfect agreement), and so are
    # its floor and d_t / floor, so that the planner is fed nothing.
    assert result.shared_fraction > 0  # nan because nothing moved, not because nothing is shared
    assert math.isnan(result.model_shift) and math.isnan(result.shift_floor) and math.isnan(result.relative_shift)


def test_all_full_capacity_is_fedavg():
    fam = get_family("digits-cnn")
    model = fam.build()
    state, contribs, slicer, _ = random_contributions(model, fam.split_map, "full", [(1, 1.0), (2, 1.0), (3, 1.0)], 0)
    result = scatter_average(state, contribs, slicer, keys=[k for k, _ in model.named_parameters()])
    total = sum(c.weight for c in contribs)
    for k, _ in model.named_parameters():
        fedavg = sum(c.weight * c.state[k].double() for c in contribs) / total
        torch.testing.assert_close(result.state[k].double(), fedavg, rtol=1e-6, atol=1e-6)
    assert result.covered_fraction == 1.0 and result.shared_fraction == 1.0
    assert result.coverage_histogram == {3: sum(model.state_dict()[k].numel() for k, _ in model.named_parameters())}


def test_uncovered_coordinates_keep_their_value_and_shift():
    model = tiny_model()
    slicer = Slicer(TINY_SPLIT)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    units = {"h": np.array([0]), "o": np.array([1, 2])}
    sub = slicer.extract(state, units)
    up = {k: v + 1 for k, v in sub.items()}
    down = {k: v - 1 for k, v in sub.items()}
    res = scatter_average(state, [Contribution(units, up, 1.0), Contribution(units, down, 1.0)], slicer)
    # Both cover the same coordinates with opposite updates: the mean is θ, the shift is total.
    assert res.model_shift == pytest.approx(1.0)
    for k, v in state.items():
        torch.testing.assert_close(res.state[k], v)
    agree = scatter_average(state, [Contribution(units, up, 1.0), Contribution(units, up, 3.0)], slicer)
    assert agree.model_shift == pytest.approx(0.0, abs=1e-12)
    assert torch.equal(agree.state["0.weight"][2:], state["0.weight"][2:])  # units 1, 2 of h untouched
    assert torch.allclose(agree.state["0.weight"][:2], state["0.weight"][:2] + 1)
    assert 0 < agree.covered_fraction < 1
    total = sum(t.numel() for t in state.values())
    assert sum(agree.coverage_histogram.values()) == total and set(agree.coverage_histogram) == {0, 2}
    assert agree.coverage_histogram[2] == round(agree.covered_fraction * total)


def test_rejects_empty_and_nonpositive_weights():
    model = tiny_model()
    state = model.state_dict()
    with pytest.raises(ValueError, match="at least one"):
        scatter_average(state, [], Slicer(TINY_SPLIT))
    units = {"h": np.array([0]), "o": np.array([0])}
    sub = Slicer(TINY_SPLIT).extract(state, units)
    with pytest.raises(ValueError, match="positive weight"):
        scatter_average(state, [Contribution(units, sub, 0.0)], Slicer(TINY_SPLIT))


def test_model_shift_of_independent_updates_sits_at_its_floor():
    """d_t of independent noise is (k − 1)/k, not 1: the reported floor says so, per coverage."""
    model = tiny_model()
    slicer = Slicer(TINY_SPLIT)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    units = {"h": np.arange(3), "o": np.arange(4)}
    sub = slicer.extract(state, units)
    gen = torch.Generator().manual_seed(0)
    for k in (2, 4):
        contribs = [
            Contribution(units, {n: v + torch.randn(v.shape, generator=gen) for n, v in sub.items()}, 1.0) for _ in range(k)
        ]
        res = scatter_average(state, contribs, slicer)
        assert res.shift_floor == pytest.approx((k - 1) / k)
        assert res.model_shift == pytest.approx(res.shift_floor, abs=0.15)
    noisy = {n: v + torch.randn(v.shape, generator=gen) for n, v in sub.items()}
    weighted = scatter_average(state, [Contribution(units, noisy, 1.0), Contribution(units, sub, 3.0)], slicer)
    assert weighted.shift_floor == pytest.approx(1 - (1 + 9) / 16)
