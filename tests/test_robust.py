"""Robust aggregation: clipping and coordinate-wise trimmed mean / median limit one attacker."""

import numpy as np
import pytest
import torch

from msfusion_core.method.aggregate import Contribution, scatter_average
from msfusion_core.models import get_family
from msfusion_core.method.planner import make_planner
from msfusion_core.method.robust import clip_updates, robust_average
from msfusion_core.method.server import Reply, SubmodelServer
from msfusion_core.method.slicing import Slicer
from msfusion_core.method.split_map import group_sizes, model_shapes


def honest_round(num=8, r=0.5, planner="msfusion", seed=0):
    fam = get_family("digits-cnn")
    torch.manual_seed(seed)
    model = fam.build()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    keys = [k for k, _ in model.named_parameters()]
    slicer = Slicer(fam.split_map)
    gs = group_sizes(model_shapes(model), fam.split_map)
    plan = make_planner(planner).plan(1, [(n, r) for n in range(num)], gs)
    gen = torch.Generator().manual_seed(seed)
    contribs = []
    for pp in plan.participants.values():
        sub = slicer.extract(state, pp.unit_indices(), keys)
        contribs.append(Contribution(pp.unit_indices(), {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in sub.items()}, 1.0))
    return state, contribs, slicer, keys, plan


def attack(state, contrib, slicer, keys, scale):
    """The participant sends its update scaled by ``scale`` (a model-replacement style attack)."""
    out = {}
    for k in keys:
        base = slicer.extract(state, contrib.units, [k])[k]
        out[k] = base + scale * (contrib.state[k] - base)
    return Contribution(contrib.units, out, contrib.weight)


def coverage(state, contribs, slicer, keys):
    counts = {}
    for k in keys:
        c = torch.zeros(state[k].numel())
        for con in contribs:
            pos = slicer.flat_positions(k, state[k].shape, con.units)
            c[pos if pos is not None else slice(None)] += 1
        counts[k] = c.reshape(state[k].shape)
    return counts


def error(a, b, keys, mask=None):
    return float(torch.sqrt(sum((((a[k] - b[k]) ** 2) * (1.0 if mask is None else mask[k])).sum() for k in keys)))


@pytest.mark.parametrize("mode", ["trimmed-mean", "median"])
def test_robust_statistics_protect_well_covered_coordinates(mode):
    # 8 participants at r = 1/2: a coordinate is covered by 0..8 of them. Trimming β = 1/4 drops the
    # attacker wherever at least 4 participants cover the coordinate; the median wherever ≥ 3 do.
    state, contribs, slicer, keys, _ = honest_round()
    honest = scatter_average(state, contribs, slicer, keys).state
    poisoned = [attack(state, contribs[0], slicer, keys, 1000.0)] + contribs[1:]
    plain = scatter_average(state, poisoned, slicer, keys).state
    defended = robust_average(state, poisoned, slicer, keys, mode, trim_fraction=0.25).state
    well = {k: (c >= 4).float() for k, c in coverage(state, poisoned, slicer, keys).items()}
    assert sum(float(m.sum()) for m in well.values()) > 1000
    assert error(defended, honest, keys, well) < 0.05 * error(plain, honest, keys, well)


@pytest.mark.parametrize("mode", ["none", "trimmed-mean", "median"])
def test_clipping_limits_a_scaled_update_everywhere(mode):
    state, contribs, slicer, keys, _ = honest_round()
    honest = scatter_average(state, contribs, slicer, keys).state
    poisoned = [attack(state, contribs[0], slicer, keys, 1000.0)] + contribs[1:]
    plain = scatter_average(state, poisoned, slicer, keys).state
    clipped = clip_updates(state, poisoned, slicer, keys, 2.0)
    defended = robust_average(state, clipped, slicer, keys, mode, trim_fraction=0.25).state
    assert error(defended, honest, keys) < 0.01 * error(plain, honest, keys)


def test_trimmed_mean_without_trimming_is_the_plain_mean():
    state, contribs, slicer, keys, _ = honest_round(num=5)
    plain = scatter_average(state, contribs, slicer, keys).state
    trimmed = robust_average(state, contribs, slicer, keys, "trimmed-mean", trim_fraction=0.0).state
    for k in keys:
        torch.testing.assert_close(trimmed[k], plain[k], rtol=1e-5, atol=1e-6)


def test_median_matches_brute_force_and_uncovered_coordinates_keep_their_value():
    state, contribs, slicer, keys, _plan = honest_round(num=3, r=0.25, planner="fd")
    robust = robust_average(state, contribs, slicer, keys, "median").state
    k = "hidden.weight"
    values = {}
    for c in contribs:
        for i_out, u in enumerate(c.units["h"]):
            for i_in, v in enumerate(c.units["c3"]):
                values.setdefault((int(u), int(v)), []).append(float(c.state[k][i_out, i_in]))
    for (u, v), vals in values.items():
        assert float(robust[k][u, v]) == pytest.approx(float(torch.tensor(vals).median()))
    covered = np.zeros(state[k].shape, dtype=bool)
    for u, v in values:
        covered[u, v] = True
    assert torch.equal(robust[k][torch.from_numpy(~covered)], state[k][torch.from_numpy(~covered)])


def test_clipping_bounds_update_size():
    state, contribs, slicer, keys, _ = honest_round()
    big = attack(state, contribs[0], slicer, keys, 50.0)
    clipped = clip_updates(state, [big] + contribs[1:], slicer, keys, 1.5)
    def rms(c):
        sq = sum(float(((c.state[k] - slicer.extract(state, c.units, [k])[k]) ** 2).sum()) for k in keys)
        return (sq / sum(c.state[k].numel() for k in keys)) ** 0.5
    sizes = [rms(c) for c in clipped]
    assert sizes[0] <= 1.5 * float(np.median(sizes)) * 1.01
    assert clipped[1] is contribs[1]  # honest updates below the limit are untouched


def test_server_rejects_an_unknown_robust_mode():
    fam = get_family("digits-cnn")
    with pytest.raises(ValueError, match="unknown robust aggregation"):
        SubmodelServer(fam.build, fam.split_map, make_planner("msfusion"), robust="krum")


# Three full-capacity replies moving every parameter by +1, +2 and +100 (an outlier). Clipping at
# 2 × the median update size (2) scales the outlier to +4. The server's result tells which path ran:
# the median is +2 with or without clipping; the weighted mean is (1 + 2 + 4) / 3 clipped and
# (1 + 2 + 100) / 3 unclipped. A server that ignored ``robust`` or ``clip_factor`` lands elsewhere.
@pytest.mark.parametrize(
    "robust, clip, moved",
    [("median", 2.0, 2.0), ("median", 0.0, 2.0), ("none", 2.0, 7 / 3), ("none", 0.0, 103 / 3)],
)
def test_server_applies_its_robust_and_clip_settings(robust, clip, moved):
    fam = get_family("digits-cnn")
    server = SubmodelServer(fam.build, fam.split_map, make_planner("msfusion"), robust=robust, clip_factor=clip)
    plan = server.plan_round(1, [(1, 1.0), (2, 1.0), (3, 1.0)])
    before = {k: v.clone() for k, v in server.state.items()}
    steps = {1: 1.0, 2: 2.0, 3: 100.0}
    replies = []
    for n, pp in plan.participants.items():
        received = server.download(pp)
        replies.append(Reply(n, {k: received[k] + steps[n] for k in server.param_keys}, 10))
    server.aggregate(plan, replies)
    for k, v in before.items():
        if k in server.param_keys:
            torch.testing.assert_close(server.state[k], v + moved, rtol=1e-5, atol=1e-4)
        else:
            assert torch.equal(server.state[k], v), k  # buffers are not aggregated


def test_server_median_with_clipping_leaves_theta_alone_when_nobody_moves():
    # Every update is zero: the median update size (the clipping limit) is 0, and nothing may be
    # divided by it or moved.
    fam = get_family("digits-cnn")
    server = SubmodelServer(fam.build, fam.split_map, make_planner("msfusion"), robust="median", clip_factor=2.0)
    plan = server.plan_round(1, [(1, 0.5), (2, 0.5), (3, 0.5)])
    replies = [Reply(n, {k: v for k, v in server.download(pp).items() if k in server.param_keys}, 10) for n, pp in plan.participants.items()]
    before = {k: v.clone() for k, v in server.state.items()}
    server.aggregate(plan, replies)
    assert all(torch.equal(server.state[k], before[k]) for k in before)
