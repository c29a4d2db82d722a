"""Whole rounds without any FL framework: SubmodelServer + Participant on real digits data."""

import pytest
import torch

from msfusion_core.data import load_partition, load_test
from msfusion_core.models import get_family
from msfusion_core.method.overlap import OverlapSchedule
from msfusion_core.local.participant import Participant
from msfusion_core.method.planner import make_planner
from msfusion_core.method.server import Reply, ReplyError, SubmodelServer
from msfusion_core.local.training import TrainConfig, calibrate_batchnorm, evaluate


def run_rounds(planner_name, rounds=3, capacities=(1.0, 0.5, 0.5, 0.25), mu=1.0, scaler=False):
    fam = get_family("digits-cnn")
    server = SubmodelServer(fam.build, fam.split_map, make_planner(planner_name), small_capacity=0.5)
    part = Participant(fam.build, fam.split_map, fam.representation_layer)
    nodes = {100 + i: r for i, r in enumerate(capacities)}
    data = {n: load_partition("digits", None, "dirichlet", len(nodes), i, alpha=1.0) for i, n in enumerate(nodes)}
    previous: dict = {}
    cfg = TrainConfig("digits", epochs=2, batch_size=32, lr=0.05, mu=mu)
    history = []
    for t in range(1, rounds + 1):
        plan = server.plan_round(t, list(nodes.items()))
        replies = []
        for n, pp in plan.participants.items():
            received = server.download(pp.__class__.from_compact(pp.to_compact(), part.group_sizes))
            update, previous[n] = part.train(pp, received, data[n], cfg, previous=previous.get(n), scaler=scaler, seed=t)
            assert update.bytes_up <= update.bytes_down
            replies.append(Reply(n, update.state, update.result.num_examples))
        for r in replies:
            server.validate(plan.participants[r.node_id], r)
        history.append(server.aggregate(plan, replies))
    model = server.global_model()
    calibrate_batchnorm(model, load_partition("digits", None, "iid", 1, 0), "digits")
    return evaluate(model, load_test("digits"), "digits"), history, server


@pytest.mark.parametrize("planner", ["msfusion", "small"])
def test_rounds_learn_digits(planner):
    (_loss, acc), history, _server = run_rounds(planner)
    assert acc > 0.6, acc  # chance is 0.1
    if planner == "msfusion":
        assert all(0 <= h.model_shift <= 1 for h in history)
        assert all(h.covered_fraction == 1.0 for h in history)  # full-capacity node covers everything


def test_validate_rejects_malformed_replies_and_keeps_theta():
    fam = get_family("digits-cnn")
    server = SubmodelServer(fam.build, fam.split_map, make_planner("msfusion"))
    plan = server.plan_round(1, [(1, 0.5)])
    pp = plan.participants[1]
    good = {k: v for k, v in server.download(pp).items() if k in server.param_keys}
    before = {k: v.clone() for k, v in server.state.items()}
    bad_cases = {
        "shape": (good | {"fc.weight": torch.zeros(10, 3)}, 5),
        "non-finite": (good | {"fc.bias": torch.full((10,), float("nan"))}, 5),
        "misses": ({k: v for k, v in good.items() if k != "conv1.weight"}, 5),
        "unexpected": (good | {"extra.weight": torch.zeros(1)}, 5),
        "dtype": (good | {"fc.bias": good["fc.bias"].double()}, 5),
        "positive integer": (good, 0),
    }
    for reason, (state, n) in bad_cases.items():
        with pytest.raises(ReplyError, match=reason):
            server.validate(pp, Reply(1, state, n))
    for k, v in before.items():
        assert torch.equal(server.state[k], v)
    server.validate(pp, Reply(1, good, 5))  # the well-formed reply passes


@pytest.mark.parametrize("agree, moves", [(False, "stays"), (True, "falls")])
def test_adaptive_overlap_does_not_feed_on_its_own_coverage(agree, moves):
    """Independent updates sit at d_t's floor, which rises with the overlap; the adaptive rule steers
    d_t / floor, so noise leaves o where it is (an absolute d* drove it to o_max), and agreement
    between participants lowers it (more coverage)."""
    fam = get_family("digits-cnn")
    schedule = OverlapSchedule("adaptive", start=0.5, eta=0.2, max_overlap=0.9)
    server = SubmodelServer(fam.build, fam.split_map, make_planner("msfusion", schedule=schedule))
    nodes = [(100 + i, 0.5) for i in range(8)]
    gen = torch.Generator().manual_seed(0)
    for t in range(1, 11):
        plan = server.plan_round(t, nodes)
        keys = server.param_keys
        common = {k: torch.randn(server.state[k].shape, generator=gen) for k in keys}
        replies = []
        for n, pp in plan.participants.items():
            received = server.download(pp)
            shared = server.slicer.extract(common, pp.unit_indices(), keys)
            noise = {k: torch.randn(received[k].shape, generator=gen) for k in keys}
            # "agree": everyone's update is its slice of one common direction plus a little noise.
            update = {k: received[k] + (shared[k] + 0.1 * noise[k] if agree else noise[k]) for k in keys}
            replies.append(Reply(n, update, 10))
        result = server.aggregate(plan, replies)
        assert result.shift_floor > 0.5  # several participants share each coordinate
    final = schedule.overlap(11)
    if moves == "stays":
        assert abs(final - 0.5) < 0.1
    else:
        assert final < 0.2
