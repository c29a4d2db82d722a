"""The overlap that starts as the small model (issue 15, part 2): a shared core plus a double-shifted
remainder, function-preserving growth, and the plateau rule that opens the overlap up."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.experiments import C1_SETTING
from msfusion_app.settings import Settings
from msfusion_core.data import holdout_rows, load_holdout, load_partition, load_test
from msfusion_core.method.growth import scale_inputs, silence_non_core_inputs
from msfusion_core.models import get_family
from msfusion_core.method.overlap import AdaptiveOverlap, ConstantOverlap, GrowOverlap
from msfusion_core.method.planner import CorePlanner, ParticipantPlan, SpreadPlanner, Window, plan_core_and_remainder, plan_double_shift, window_length
from msfusion_core.method.slicing import Slicer
from msfusion_core.method.split_map import group_sizes, model_shapes
from server_app.app import make_strategy, run
from msfusion.local_grid import LocalGrid, run_local, simulated_node_configs
from server_app.strategy import MSfusion, last_rounds_at_each_lr


@given(
    k=st.integers(1, 64),
    r=st.floats(0.01, 1.0),
    o=st.floats(0.0, 1.0),
    num=st.integers(1, 9),
    t=st.integers(0, 300),
    offset=st.integers(0, 1000),
)
def test_core_and_remainder_are_disjoint_have_the_right_sizes_and_survive_the_compact_form(k, r, o, num, t, offset):
    plans = plan_core_and_remainder(t, [(10 + i, r) for i in range(num)], {"g": k}, o, group_offsets={"g": offset})
    m = window_length(r, k)
    core = min(round(o * m), m)
    span = k
    for plan in plans.values():
        w = plan.groups["g"]
        idx = plan.indices("g")
        assert len(idx) == m and np.unique(idx).size == m  # m distinct units
        assert idx[:core].tolist() == list(range(core))  # the shared core: the same prefix for everyone
        rest = idx[core:]
        assert np.all(rest >= core) and np.all(rest < span)  # the remainder is after the core, inside the span
        assert np.all(np.diff(rest - core) % (span - core) == 1) or rest.size <= 1  # contiguous modulo S − c
        assert ParticipantPlan.from_compact(plan.to_compact(), {"g": k}).indices("g").tolist() == idx.tolist()
        assert isinstance(w, Window)
        p = w.expected_inclusion()
        assert p[span:].sum() == 0 and p.sum() == pytest.approx(m)  # the inclusion shares are the window's m units


def test_overlap_one_is_exactly_the_small_models_units_and_zero_is_double_shifting():
    sizes = {"a": 16, "b": 40}
    parts = [(3, 0.25), (7, 0.25), (9, 0.25)]
    one = CorePlanner(ConstantOverlap(1.0)).plan(5, parts, sizes)
    for plan in one.participants.values():
        assert {g: plan.indices(g).tolist() for g in sizes} == {g: list(range(window_length(0.25, k))) for g, k in sizes.items()}
    zero = plan_core_and_remainder(5, parts, sizes, 0.0)
    evenly_spaced = plan_double_shift(5, parts, sizes, spread=1.0)
    for pid, plan in zero.items():
        assert plan.unit_indices().keys() == evenly_spaced[pid].unit_indices().keys()
        assert all(plan.indices(g).tolist() == evenly_spaced[pid].indices(g).tolist() for g in sizes)


def test_core_plans_are_deterministic_and_the_compact_form_checks_the_core():
    sizes = {"a": 16, "b": 16}
    make = lambda: CorePlanner(ConstantOverlap(0.5), seed=4)  # noqa: E731
    a, b = make().plan(9, [(1, 0.5), (2, 0.5)], sizes), make().plan(9, [(2, 0.5), (1, 0.5)], sizes)
    assert all(a.participants[n].to_compact() == b.participants[n].to_compact() for n in (1, 2))
    compact = a.participants[1].to_compact()
    assert compact["windows"]["a"][3] == 4  # core = 0.5 · 8
    bad = json.loads(json.dumps(compact))
    bad["windows"]["a"][3] = 9  # a core longer than the window
    with pytest.raises(ValueError, match="plan window for group 'a'.*core=9"):
        ParticipantPlan.from_compact(bad, sizes)


def test_silenced_full_model_computes_what_its_width_r_core_does():
    fam = get_family("cifar-cnn", 10, 16)
    torch.manual_seed(0)
    model = fam.build().eval()
    slicer = Slicer(fam.split_map)
    sizes = group_sizes(model_shapes(model), fam.split_map)
    core = {g: window_length(0.25, k) for g, k in sizes.items()}
    state = silence_non_core_inputs(model.state_dict(), slicer, sizes, core)
    full = fam.build().eval()
    full.load_state_dict(state)
    from msfusion_core.method.submodel import build_submodel

    small = build_submodel(fam.build, slicer.extract(state, {g: np.arange(c) for g, c in core.items()})).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(full(x), small(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(model(x), small(x), atol=1e-3)  # without silencing the extra units speak


def test_plateau_rule_compares_window_means_and_keeps_only_a_step_that_beats_the_plateau():
    sched = GrowOverlap(patience=30, step=0.25, min_improvement=0.01)
    assert sched.overlap(1) == 1.0
    for t in range(0, 101, 10):  # improving 5 % every 10 rounds: no change
        assert not sched.observe_validation(t, 2.0 * 0.95 ** (t / 10))
    flat = 2.0 * 0.95**10
    for t in range(110, 141, 10):  # flat since 100, but the window before still holds the descent
        sched.observe_validation(t, flat)
    assert sched.current == 1.0
    assert sched.observe_validation(150, flat) == "stepped"  # (120, 150] and (90, 120] are both flat: lowered
    assert sched.current == 0.75 and sched.state.trial_bar == pytest.approx(flat) and sched.state.losses == []
    # On trial: the first window (150, 180] is for recovery; the second must beat the plateau by 1 %.
    for t, loss in zip(range(160, 201, 10), (2 * flat, 1.2 * flat, 0.95 * flat, 0.95 * flat, 0.95 * flat)):
        assert not sched.observe_validation(t, loss)
        assert sched.current == 0.75
    assert sched.observe_validation(210, 0.95 * flat) == "kept" and sched.current == 0.75
    assert sched.state.trial_bar is None  # judged at 210 and kept
    for t in range(220, 231, 10):  # flat again since 180: the next step, at 230
        sched.observe_validation(t, 0.95 * flat)
    assert sched.current == 0.5 and sched.state.trial_bar == pytest.approx(0.95 * flat)
    # Back to its bar but not below it by 1 %: the step did not pay, and is undone for good.
    undone = [sched.observe_validation(t, 0.95 * flat) for t in range(240, 301, 10)]
    assert undone == [None] * 5 + ["undone", None] and sched.current == 0.75 and sched.state.settled
    for t in range(310, 600, 10):
        assert not sched.observe_validation(t, 0.5 * flat)
    assert sched.current == 0.75
    restored = GrowOverlap()
    restored.load_state_dict(json.loads(json.dumps(sched.state_dict())))  # as a checkpoint stores it
    assert restored.state_dict() == sched.state_dict()
    fresh = GrowOverlap()
    fresh.observe_validation(10, float("nan"))  # a NaN loss is ignored
    assert fresh.state.losses == []
    adaptive = AdaptiveOverlap(0.5)
    adaptive.observe_validation(10, 1.0)
    assert adaptive.current == 0.5  # only the grow rule listens to validation


def test_on_c1s_small_curve_the_window_test_waits_for_the_lr_decay():
    """C1's starts-as-small run (r = 1/4, seed 0) is bit-identical to small with the same held-out
    rows until its first step; the first form of the rule (best so far) saw a plateau in noise at
    round 80 (docs/results.md, C1)."""
    rows = [json.loads(line) for line in open(Path(__file__).parents[1] / "docs/results/C1/runs/small-val-r0.25-s0.jsonl")]
    losses = [(r["round"], r["validation-loss"]) for r in rows if r.get("validation-loss") is not None]

    def first_step(trial_barriers: tuple[int, ...] = ()) -> int | None:
        sched = GrowOverlap(patience=30)
        if trial_barriers:
            sched.set_run_length(trial_barriers[-1], trial_barriers[:-1])
        for t, loss in losses:
            sched.observe_validation(t, loss)
            if sched.current < 1.0:
                return t
        return None

    assert first_step() == 210  # past the first lr decay (round 150)
    # ... and 15 rounds before the second (225), which would then judge its trial. With C1's barriers
    # the step waits for round 230, whose trial (231-290) runs at one lr and ends before the run does.
    c1 = Settings.from_mapping(C1_SETTING | {"validation-examples": 2000})
    barriers = (*last_rounds_at_each_lr(c1.lr_factor, 300), 300)
    assert barriers == (150, 225, 300)
    assert first_step(barriers) == 230


def test_a_plateau_waits_while_its_trial_would_span_an_lr_change_or_the_end_of_the_run():
    sched = GrowOverlap(patience=10, step=0.25)
    sched.set_run_length(100, (50,))
    assert [sched.trial_would_span_barrier(t) for t in (29, 30, 31, 50, 51, 80, 81, 100, 101)] == [
        False, False, True, True, False, False, True, True, False
    ]
    unguarded = GrowOverlap(patience=10, step=0.25)

    def loss(t: int) -> float:  # improving to round 30, flat, and 10 % lower 10 rounds after a step
        return 0.95 ** min(t, 30) * (0.9 if sched.current < 1.0 and t > sched.state.trial_round + 10 else 1.0)

    events = {t: sched.observe_validation(t, loss(t)) for t in range(0, 101)}
    first_unguarded = next(t for t in range(0, 101) if unguarded.observe_validation(t, 0.95 ** min(t, 30)) == "stepped")
    # Flat from round 31: the window test sees the plateau within the 20 rounds before the lr change
    # after round 50 and waits; the step comes at 51 and its trial, all at the new lr, keeps it at 71.
    # The loss is flat again by 81, but a trial from then on would outlast the run (round 100).
    assert first_unguarded < 50
    assert {t: e for t, e in events.items() if e} == {51: "stepped", 71: "kept"} and sched.current == 0.75
    assert last_rounds_at_each_lr(Settings.from_mapping({"num-server-rounds": 40}).lr_factor, 40) == ()
    assert last_rounds_at_each_lr(Settings.from_mapping({"num-server-rounds": 301, "lr-decay-at": "0.5,0.75"}).lr_factor, 301) == (150, 225)


def test_an_undone_step_returns_theta_to_its_copy_from_the_round_of_the_step():
    fam = get_family("digits-cnn", 10, 16)
    planner = CorePlanner(GrowOverlap(patience=10, step=0.5), core_capacity=0.5)
    from msfusion_core.method.server import SubmodelServer

    server = SubmodelServer(fam.build, fam.split_map, planner)
    at_step = {k: v.clone() for k, v in server.state.items()}
    for t in (0, 10, 20):  # (10, 20] no better than (0, 10]: o 1 -> 0.5, on trial
        server.observe_validation(t, 1.0)
    assert planner.schedule.current == 0.5 and server.before_step is not None
    server.state = {k: torch.ones_like(v) if v.is_floating_point() else v for k, v in server.state.items()}  # trained on trial
    server.observe_validation(30, 2.0)
    server.observe_validation(40, 2.0)  # (30, 40] does not beat the plateau's 1.0: undone
    assert planner.schedule.current == 1.0 and server.before_step is None
    assert all(torch.equal(server.state[k], at_step[k]) for k in at_step)


def test_the_grow_rule_needs_a_validation_split():
    with pytest.raises(ValueError, match="grow.*validation-examples > 0"):
        Settings.from_mapping({"overlap-schedule": "grow", "overlap-start": 1.0, "validation-examples": 0})
    # Only msfusion reads the overlap: a baseline needs no validation split.
    assert Settings.from_mapping({"planner": "fedrolex", "overlap-schedule": "grow", "validation-examples": 0}).planner == "fedrolex"
    with pytest.raises(ValueError, match="overlap-schedule must be one of adaptive, constant, grow; got 'ring'"):
        Settings.from_mapping({"overlap-schedule": "ring"})


def test_held_out_rows_are_in_no_partition_and_are_the_servers_validation_split():
    held = holdout_rows(1797, 200, seed=5)
    assert held.size == 200 and np.unique(held).size == 200
    x_all = torch.cat([load_partition("digits", None, "iid", 4, p, seed=5).x for p in range(4)])
    x_kept = torch.cat([load_partition("digits", None, "iid", 4, p, seed=5, holdout=200).x for p in range(4)])
    val = load_holdout("digits", None, 200, seed=5)
    assert x_kept.shape[0] == x_all.shape[0] - 200 and val.x.shape[0] == 200
    # No validation image is among the images the nodes train on.
    kept = {tuple(row.tolist()) for row in x_kept.reshape(x_kept.shape[0], -1)}
    assert not any(tuple(row.tolist()) in kept for row in val.x.reshape(200, -1))


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# The starts-as-small variant: the core form at o = 1, lowered on plateaus of the validation loss.
GROW_VARIANT = {"planner": "msfusion", "overlap-schedule": "grow"}


def test_text_validation_splits_are_never_trained_on(tmp_path):
    """SST-2 holds out train sentences like the image sets; WikiText-2 validates on its own validation split."""
    sst2 = tmp_path / "sst2"
    sst2.mkdir()
    for split, rows in (("train", 600), ("validation", 50)):  # the real sentences, fewer of them
        datasets.Dataset.from_parquet(str(SHARED_DATA / "sst2" / f"{split}.parquet")).select(range(rows)).to_parquet(str(sst2 / f"{split}.parquet"))
    args = ("sst2", str(sst2), "iid")
    kept = torch.cat([load_partition(*args, 3, p, seed=2, seq_len=32, holdout=100).x for p in range(3)])
    every = torch.cat([load_partition(*args, 3, p, seed=2, seq_len=32).x for p in range(3)])
    val = load_holdout("sst2", str(sst2), 100, seed=2, seq_len=32)
    assert kept.shape[0] == every.shape[0] - 100 and val.x.shape == (100, 32)
    trained = {tuple(row.tolist()) for row in kept}
    assert not any(tuple(row.tolist()) in trained for row in val.x)
    assert sum(tuple(row.tolist()) in {tuple(r.tolist()) for r in every} for row in val.x) == 100
    wiki = str(SHARED_DATA / "wikitext2")
    valid = load_holdout("wikitext2", wiki, 40, seed=0, seq_len=32)
    torch.testing.assert_close(valid.x, load_test("wikitext2", wiki, 40, split="validation", seq_len=32).x)
    with pytest.raises(ValueError, match="validation sequences"):
        load_holdout("wikitext2", wiki, 10**7, seed=0, seq_len=32)


def test_overlap_held_at_one_trains_the_same_model_as_small(tmp_path, monkeypatch):
    """For the same seed the core form at o = 1 is `small`: the full model's test curve is small's,
    up to float noise, and so is the grow variant while its overlap is still 1. Without the
    silenced non-core units it is not."""
    base = {
        "num-server-rounds": 3, "split-ratio-tiers": "0.5", "contrastive-mu": 0.0, "local-examples": 48, "output-dir": str(tmp_path), "seed": 3,
        "validation-examples": 200,
    }
    arms = {
        "small": {"planner": "small"},
        "core": "core form at o = 1",
        "default": GROW_VARIANT,
    }

    def central_loss(name: str, cfg: dict | str) -> list[float]:
        if isinstance(cfg, dict):
            run_local(base | cfg | {"run-name": name}, 3, num_threads=1)
        else:  # the core form held at o = 1, which no run-config key spells: a planner of its own
            settings = Settings.from_mapping(base | {"planner": "msfusion", "inclusion-scaling": False, "run-name": name})
            planner = CorePlanner(ConstantOverlap(1.0), seed=3, core_capacity=0.5, inclusion_scaling=False, contrastive_mu=0.0)
            run_with(settings, planner, 3)
        return [json.loads(line)["central-loss"] for line in open(tmp_path / name / "metrics.jsonl")]

    loss = {name: central_loss(name, cfg) for name, cfg in arms.items()}
    monkeypatch.setattr("msfusion_core.method.server.silence_non_core_inputs", lambda state, *_: dict(state))
    loss["unsilenced"] = central_loss("unsilenced", arms["core"])
    np.testing.assert_allclose(loss["core"], loss["small"], rtol=1e-5)
    np.testing.assert_allclose(loss["default"], loss["small"], rtol=1e-5)
    assert loss["core"][1:] != pytest.approx(loss["unsilenced"][1:], rel=1e-3)


def test_on_the_llama_family_too_the_grow_variant_at_overlap_one_trains_small(tmp_path):
    """Heads and FFN units split, d_model kept whole: the core is still exactly the width-r model.
    (LM2's default and small agree to 1e-8 in train loss up to round 12; from there AdamW amplifies
    float rounding, and their curves part like two seeds'.)"""
    base = {
        "model": "llama", "model-width": 128, "model-layers": 1, "dataset": "wikitext2", "data-path": str(SHARED_DATA / "wikitext2"),
        "partitioner": "iid", "seq-len": 16, "optimizer": "adamw", "lr": 0.002, "batch-size": 8, "local-examples": 16,
        "num-server-rounds": 3, "split-ratio-tiers": "0.5", "central-eval-examples": 32,
        "contrastive-mu": 0.0, "output-dir": str(tmp_path), "seed": 3, "validation-examples": 16,
    }

    def central_loss(name: str, cfg: dict) -> list[float]:
        run_local(base | cfg | {"run-name": name}, 2, num_threads=1)
        return [json.loads(line)["central-loss"] for line in open(tmp_path / name / "metrics.jsonl")]

    small, default = central_loss("small", {"planner": "small"}), central_loss("default", GROW_VARIANT)
    assert len(small) == 4 and small[-1] < small[0]
    np.testing.assert_allclose(default, small, rtol=1e-5)


def test_a_plateau_run_validates_on_held_out_rows_and_logs_the_overlap(tmp_path):
    settings = Settings.from_mapping({
        "num-server-rounds": 6, "planner": "msfusion", "overlap-schedule": "grow", "validation-examples": 300,
        "inclusion-scaling": False, "local-examples": 32, "output-dir": str(tmp_path), "run-name": "plateau",
    })
    # Nothing counts as a gain: lowered after every window of one validation.
    run_with(settings, CorePlanner(GrowOverlap(patience=1, step=0.5, min_improvement=0.99), inclusion_scaling=False), 2)
    rows = [json.loads(line) for line in open(tmp_path / "plateau" / "metrics.jsonl")]
    assert all("validation-loss" in r for r in rows[1:])
    # Validated after every round; no loss counts as a gain, so o is lowered once
    # two windows of one round have passed (after round 2), and the step, which cannot beat its bar
    # by 99 %, is undone after round 4: the last rounds are the small model again.
    assert [r["overlap"] for r in rows[1:]] == [1.0, 1.0, 0.5, 0.5, 1.0, 1.0]


def run_with(settings: Settings, planner, num_nodes: int) -> None:
    """The app's run with a planner no run-config key spells, in process, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(LocalGrid(simulated_node_configs(num_nodes), settings.to_mapping()), settings, make_strategy(settings, planner=planner))
    finally:
        torch.set_num_threads(before)


# -- inclusion scaling: the evaluated model is the sub-models' expectation ------------------------
def test_expected_inclusion_of_a_core_window():
    p = Window(start=3, length=4, size=10, core=2).expected_inclusion()
    np.testing.assert_allclose(p, [1, 1] + [2 / 8] * 8)
    np.testing.assert_allclose(Window(0, 4, 4, 4).expected_inclusion(), [1, 1, 1, 1])  # o = 1 at full width


def test_scaled_readers_give_the_mean_of_the_sub_models_over_the_remainders_shifts():
    """For the layer reading group h (fc: [10, 256]), the scaled full layer's output is exactly the
    average, over every start of the remainder window, of the output with only that window's units."""
    fam = get_family("digits-cnn")
    torch.manual_seed(0)
    state = {k: v.double() for k, v in fam.build().state_dict().items()}
    slicer = Slicer(fam.split_map)
    x = torch.randn(256, dtype=torch.float64)
    core, length, size = 40, 64, 256
    outputs = []
    for start in range(size - core):
        idx = torch.from_numpy(Window(start, length, size, core).indices())
        outputs.append(state["fc.weight"][:, idx] @ x[idx])
    factors = {"h": Window(0, length, size, core).expected_inclusion()}
    scaled = scale_inputs(state, slicer, factors)
    torch.testing.assert_close(scaled["fc.weight"] @ x, torch.stack(outputs).mean(0))
    assert torch.equal(scaled["hidden.weight"], state["hidden.weight"])  # it writes h; it reads c3, not scaled
    assert scaled["fc.bias"] is state["fc.bias"]


def test_inclusion_scaling_at_full_overlap_is_the_silenced_model_and_m_over_k_for_spread_windows():
    fam = get_family("digits-cnn")
    sizes = group_sizes(model_shapes(fam.build()), fam.split_map)
    sched = ConstantOverlap(1.0)
    planner = CorePlanner(sched, core_capacity=0.25, inclusion_scaling=True)
    plan = planner.plan(1, [(0, 0.25), (1, 0.25)], sizes)
    factors = planner.inclusion(plan)
    m = {g: window_length(0.25, k) for g, k in sizes.items()}
    for g, k in sizes.items():
        np.testing.assert_array_equal(factors[g], (np.arange(k) < m[g]).astype(float))
    torch.manual_seed(1)
    state = fam.build().state_dict()
    silenced = silence_non_core_inputs(state, Slicer(fam.split_map), sizes, m)
    scaled = scale_inputs(state, Slicer(fam.split_map), factors)
    assert all(torch.equal(scaled[k], silenced[k]) for k in state)
    spread = SpreadPlanner(sched, inclusion_scaling=True)
    shares = spread.inclusion(spread.plan(1, [(0, 0.25), (1, 0.5)], sizes))  # each window's m/K, averaged over participants
    for g, k in sizes.items():
        np.testing.assert_allclose(shares[g], np.full(k, (window_length(0.25, k) + window_length(0.5, k)) / (2 * k)))
    off = CorePlanner(sched, core_capacity=0.25, inclusion_scaling=False)
    assert off.inclusion(plan) is None


def test_the_server_evaluates_the_scaled_model_and_keeps_theta_as_trained():
    from msfusion_core.method.server import SubmodelServer

    fam = get_family("digits-cnn")
    planner = CorePlanner(ConstantOverlap(0.5), core_capacity=0.25, inclusion_scaling=True)
    server = SubmodelServer(fam.build, fam.split_map, planner)
    server.load_state(fam.build().state_dict())  # readers of every unit nonzero, as after training
    assert torch.equal(server.global_model().state_dict()["fc.weight"], server.state["fc.weight"])  # nothing planned yet
    plan = server.plan_round(1, [(0, 0.25), (1, 0.25), (2, 0.25)])
    expected = scale_inputs(server.state, server.slicer, planner.inclusion(plan))
    evaluated = server.global_model().state_dict()
    assert all(torch.equal(evaluated[k], expected[k]) for k in ("conv2.weight", "hidden.weight", "fc.weight"))
    assert not torch.equal(evaluated["fc.weight"], server.state["fc.weight"])  # θ itself is what nodes get


def test_a_step_on_trial_survives_a_checkpoint_and_its_undo_after_a_resume_returns_theta_to_the_copy():
    family = get_family("digits-cnn", 10, 16)

    def strategy() -> MSfusion:
        planner = CorePlanner(GrowOverlap(patience=10, step=0.5), core_capacity=0.5)
        return MSfusion(family.build, family.split_map, planner)

    before = strategy()
    at_step = {k: v.clone() for k, v in before.core.state.items()}
    for t in (0, 10, 20):
        before.core.observe_validation(t, 1.0)  # a plateau: o 1 -> 0.5, on trial
    before.core.state = {k: v + 1 if v.is_floating_point() else v for k, v in before.core.state.items()}  # trained on trial
    after = strategy()  # a new process, resumed from the checkpoint after round 25
    after.restore(25, before.checkpoint_tensors(), json.loads(json.dumps(before.state_dict())))
    assert after.planner.schedule.current == 0.5
    assert all(torch.equal(after.core.state[k], before.core.state[k]) for k in at_step)
    after.core.observe_validation(30, 2.0)
    after.core.observe_validation(40, 2.0)  # did not pay: undone
    assert after.planner.schedule.current == 1.0
    assert all(torch.equal(after.core.state[k], at_step[k]) for k in at_step)


def test_a_step_undone_at_the_last_round_leaves_the_runs_result_the_model_it_returns_to(tmp_path):
    """The trial of a step taken 2·patience rounds before the end is judged at the last round. When
    it is undone there, θ returns to its copy, and the run's final test metrics must be of that
    model (the one the run ends with and checkpoints), not of the step that was undone."""
    settings = Settings.from_mapping({
        "num-server-rounds": 4, "planner": "msfusion", "overlap-schedule": "grow", "validation-examples": 300,
        "local-examples": 32, "output-dir": str(tmp_path), "run-name": "undone",
    })
    # Stepped after round 2, undone after round 4 (as above).
    run_with(settings, CorePlanner(GrowOverlap(patience=1, step=0.5, min_improvement=0.99)), 2)
    rows = [json.loads(line) for line in open(tmp_path / "undone" / "metrics.jsonl")]
    assert [r["overlap"] for r in rows[1:]] == [1.0, 1.0, 0.5, 0.5]
    assert rows[4]["validation-loss"] != rows[2]["validation-loss"]  # the trial's model was judged...
    assert (rows[4]["central-loss"], rows[4]["central-accuracy"]) == (rows[2]["central-loss"], rows[2]["central-accuracy"])  # ...and undone
