"""Defects found by using the project as an outsider would (issue 17), each guarded here."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from client_app.app import setup_from_run_config
from msfusion import NodeSetup, make_client_app, node_capacity
from msfusion_app.settings import Settings
from msfusion_core.data import load_partition
from msfusion_core.local.measure import num_bytes
from msfusion_core.models import get_family
from msfusion_core.local.participant import Participant
from msfusion_core.local.training import TrainConfig
from server_app.app import make_strategy, run
from msfusion.local_grid import LocalGrid, simulated_node_configs
from server_app.strategy import MSfusion

DIGITS = get_family("digits-cnn")


def context(node_config: dict, run_config: dict | None = None) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config or {})


# -- 2. a ClientApp that fails every time ----------------------------------------------------
def test_a_missing_representation_layer_is_caught_when_the_participant_is_built():
    with pytest.raises(ValueError, match=r"representation_layer 'nohead' is not a module of DigitsCNN.*conv1"):
        Participant(DIGITS.build, DIGITS.split_map, "nohead")
    with pytest.raises(ValueError, match="not a parameter or buffer"):
        Participant(DIGITS.build, {"nothere.weight": ("c1", None)}, "fc")


def test_the_run_fails_after_max_failed_rounds_naming_what_the_nodes_said(tmp_path):
    def broken_setup(ctx: Context) -> NodeSetup:
        node = setup_from_run_config(ctx)

        def no_data():
            raise ValueError("partition file is unreadable")

        return NodeSetup(node.participant, node.partition_id, node.capacity, node.train_config, no_data, node.test_data)

    settings = Settings(num_server_rounds=6, output_dir=str(tmp_path), run_name="r")
    grid = LocalGrid(simulated_node_configs(2), settings.to_mapping(), app=make_client_app(broken_setup))
    strategy = make_strategy(settings)
    strategy.failures.max_failed_rounds = 2  # the strategy's own (3 in the app)
    with pytest.raises(RuntimeError, match=r"no valid reply for 2 rounds .*nodes said: ValueError: partition file is unreadable$"):
        run(grid, settings, strategy)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]  # round 2 raised before its row: the run stopped there


def test_a_round_with_one_valid_reply_resets_the_failure_count():
    strategy = make_strategy(Settings())
    strategy.failures.max_failed_rounds = 2
    grid = LocalGrid(simulated_node_configs(2), {"local-examples": 32})
    for t in (1, 2, 3):
        msgs = list(strategy.configure_train(t, strategy.handed, ConfigRecord(), grid))
        replies = list(grid.send_and_receive(msgs))
        strategy.aggregate_train(t, replies if t == 2 else [])  # rounds 1 and 3 get nothing
    assert strategy.failures.failed_rounds == 1


def test_flower_wrapped_exceptions_are_unwrapped():
    from server_app.nodes import last_line as _last_line

    assert _last_line("<class 'AttributeError'>:<''ResMLP' object has no attribute 'nohead''>") == "AttributeError: 'ResMLP' object has no attribute 'nohead'"
    assert _last_line("Traceback...\n  File x\nValueError: bad") == "ValueError: bad"


# -- 3. bytes, one definition ------------------------------------------------------------------
def test_bytes_are_the_tensor_payload_both_ways_and_a_full_node_receives_the_full_model():
    strategy = make_strategy(Settings(split_ratio_tiers="1.0,0.5"))
    grid = LocalGrid(simulated_node_configs(2), {"local-examples": 32, "split-ratio-tiers": "1.0,0.5"})
    msgs = list(strategy.configure_train(1, strategy.handed, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(msgs))
    strategy.aggregate_train(1, replies)
    record = strategy.rounds[1]
    metrics = record.metrics  # the whole row (Flower gets the headline)
    full_node = record.plan.participants[0]
    assert record.bytes_down[0] == num_bytes(strategy.core.download(full_node)) == strategy.core.full_model_bytes
    sent_params = {k: v for k, v in strategy.core.download(full_node).items() if k in strategy.core.param_keys}
    up_full = num_bytes(json_free_state(replies[0]))
    assert up_full == num_bytes(sent_params)  # the same tensors up as down (parameters; buffers go down only)
    assert metrics["bytes-down-serialized-per-participant"] > metrics["bytes-down-per-participant"]


def json_free_state(reply) -> dict[str, torch.Tensor]:
    return reply.content.array_records["arrays"].to_torch_state_dict()


# -- 4. capacities of simulated nodes ---------------------------------------------------------
def test_node_capacity_from_the_node_config_else_tiers_by_partition():
    assert node_capacity(context({"partition-id": 4, "split-ratio": 0.3}), (1.0, 0.5)) == 0.3
    assert [node_capacity(context({"partition-id": p}), (1.0, 0.5, 0.25)) for p in range(4)] == [1.0, 0.5, 0.25, 1.0]
    with pytest.raises(ValueError, match="neither 'split-ratio' nor 'partition-id'"):
        node_capacity(context({}))
    with pytest.raises(ValueError, match="capacity"):
        node_capacity(context({"split-ratio": 1.5}))


# -- 6. the arrays Flower hands the strategy ---------------------------------------------------
def test_arrays_changed_by_a_wrapper_are_trained_from():
    strategy = make_strategy(Settings(planner="full"))
    grid = LocalGrid(simulated_node_configs(1), {"local-examples": 32, "planner": "full"})
    noised = {k: (v + 1.0 if v.is_floating_point() else v) for k, v in strategy.core.state.items()}
    msgs = list(strategy.configure_train(1, ArrayRecord(noised), ConfigRecord(), grid))
    sent = msgs[0].content.array_records["arrays"].to_torch_state_dict()
    assert all(torch.equal(sent[k], noised[k]) for k in sent)
    same = strategy.handed
    strategy.aggregate_train(1, list(grid.send_and_receive(msgs)))
    assert strategy.handed is not same  # a new aggregate, which the next round takes as is


# -- 6b. the strategy's own API with its baselines ---------------------------------------------
def test_small_takes_the_full_models_arrays_and_reports_the_full_models_bytes():
    full = make_strategy(Settings(planner="full"))
    small = MSfusion(DIGITS.build, DIGITS.split_map, planner="small", small_capacity=0.25)
    small.core.load_state(DIGITS.build().state_dict())  # the pattern docs/own-model.md shows
    assert small.core.state["conv1.weight"].shape[0] == 8
    assert small.core.full_model_bytes == full.core.full_model_bytes
    with pytest.raises(ValueError, match=r"expected shape .* \(the global model is a slice of the full one: pass the full-width model's arrays"):
        small.core.load_state({k: v[:1] if v.ndim else v for k, v in DIGITS.build().state_dict().items()})


def test_the_server_decides_mu_and_nodes_without_a_seed_draw_different_batches():
    assert MSfusion(DIGITS.build, DIGITS.split_map, planner="msfusion").contrastive_mu == 1.0  # the method's
    assert MSfusion(DIGITS.build, DIGITS.split_map, planner="fedrolex").contrastive_mu == 0.0  # as published
    assert MSfusion(DIGITS.build, DIGITS.split_map, planner="msfusion", contrastive_mu=0.0).contrastive_mu == 0.0
    seen = {}

    def setup(ctx: Context) -> NodeSetup:
        data = load_partition("digits", None, "iid", 2, 0)
        part = Participant(DIGITS.build, DIGITS.split_map, "fc")
        return NodeSetup(part, int(ctx.node_config["partition-id"]), 0.5, TrainConfig(mu=5.0), lambda: data, lambda: data)

    app = make_client_app(setup)

    def recording(msg, ctx):
        if "settings" in msg.content.config_records:
            seen[ctx.node_config["partition-id"]] = msg.content.config_records["settings"]
        return app(msg, ctx)

    strategy = MSfusion(DIGITS.build, DIGITS.split_map, planner="fedrolex", seed=7)
    grid = LocalGrid(simulated_node_configs(2), app=app)
    grid.apps = {n: recording for n in grid.apps}
    msgs = list(strategy.configure_train(1, strategy.handed, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(msgs))
    assert all(seen[p]["contrastive_mu"] == 0.0 and seen[p]["run_seed"] == 7 for p in (0, 1))
    # Same data, same sub-model, μ = 0 sent: only the derived seeds differ, and so do the updates.
    assert all(r.content.metric_records["metrics"]["contrastive-loss"] == 0.0 for r in replies)
    a, b = (json_free_state(r) for r in replies)
    assert not torch.equal(a["conv1.weight"], b["conv1.weight"])


# -- 8. bad run-config values fail on the server, before round 1 ------------------------------
@pytest.mark.parametrize(
    "config, message",
    [
        ({"lr": -1.0}, "lr must be > 0"),
        ({"weight-decay": -0.1}, "weight-decay must be >= 0"),
        ({"round-timeout": 0.0}, "round-timeout must be > 0"),
        ({"momentum": 0.9}, "unknown setting 'momentum'"),
        ({"overlap-start": 1.5}, r"overlap-start must be in \[0, 1\]"),
        ({"model": "resnet18"}, "model 'resnet18' does not fit dataset 'digits'.*use model digits-cnn"),
    ],
)
def test_bad_settings_are_named(config, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_mapping(config)


def test_the_progress_line_leaves_out_what_a_round_does_not_have():
    from server_app.report import progress_line

    figures = {"overlap": float("nan"), "rejected": 0, "failed": 1, "train-loss": 0.3}
    line = progress_line(4, {"accuracy": 0.5, "loss": float("nan")}, figures, 1.5)
    assert line == "[round 4] accuracy=0.5000 rejected=0 failed=1 (1.5s)"  # no nan, no figure outside PROGRESS_FIELDS
