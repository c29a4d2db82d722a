"""MSfusion as shipped: the abstract's method from round one in the app and in a drop-in strategy,
and one global model (no collapse with more rounds: benchmarks/tests/test_residual_stream.py)."""

import json

import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord
from safetensors.torch import load_file

from msfusion_app.settings import Settings
from msfusion_core.data import load_test
from msfusion_core.local.training import evaluate
from msfusion_core.method.submodel import build_submodel
from msfusion_core.models import get_family
from server_app.app import make_strategy, run
from msfusion.local_grid import LocalGrid
from server_app.strategy import MSfusion

DIGITS = get_family("digits-cnn")


def grid_of(capacities, run_config):
    n = len(capacities)
    return LocalGrid(
        {100 + i: {"partition-id": i, "num-partitions": n, "split-ratio": r} for i, r in enumerate(capacities)}, run_config
    )


def test_the_apps_default_is_the_abstracts_method_and_double_shifts_from_round_one(tmp_path):
    settings = Settings(num_server_rounds=3, output_dir=str(tmp_path), run_name="r", local_examples=32)
    assert (settings.planner, settings.overlap_schedule, type(settings.make_planner()).__name__) == ("msfusion", "adaptive", "MSfusionPlanner")
    assert settings.contrastive_mu > 0 and settings.inclusion_scaling
    strategy = make_strategy(settings)
    run(grid_of([0.5] * 4, settings.to_mapping()), settings, strategy)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()][1:]
    assert all(r["overlap"] < 1.0 for r in rows)
    starts = [[strategy.rounds[t].plan.participants[p].groups["c1"].start for p in range(4)] for t in (1, 2, 3)]
    assert all(len(set(s)) == 4 for s in starts)  # spread across participants ...
    assert starts[0] != starts[1] != starts[2]  # ... and shifted across rounds


def test_a_drop_in_strategy_double_shifts_with_no_extra_wiring():
    strategy = MSfusion(DIGITS.build, DIGITS.split_map)
    assert strategy.contrastive_mu == 1.0  # the method's local loss, on by default
    capacities = [1.0, 0.5, 0.5, 0.25]
    plans = [strategy.core.plan_round(t, [(p, r) for p, r in enumerate(capacities)]) for t in range(1, 9)]
    assert all(plan.overlap < 1.0 for plan in plans)
    quarter = [plan.participants[3].groups["c1"].start for plan in plans]
    assert len(set(quarter)) > 4  # the r = 1/4 node's window moves: not a fixed prefix (HeteroFL)
    assert MSfusion(DIGITS.build, DIGITS.split_map, planner="small").contrastive_mu == 0.0  # baselines as published


@pytest.mark.parametrize("planner", ["msfusion", "fedrolex", "small"])
def test_result_arrays_are_the_model_the_last_central_evaluation_scored(tmp_path, planner):
    settings = Settings(planner=planner, num_server_rounds=2, output_dir=str(tmp_path), run_name="r", local_examples=64, split_ratio_tiers="0.5")
    result = run(grid_of([0.5] * 3, settings.to_mapping()), settings, make_strategy(settings))
    last = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()][-1]
    arrays = result.arrays.to_torch_state_dict()
    model = build_submodel(DIGITS.build, arrays)  # the small model's arrays build the small model
    loss, accuracy = evaluate(model, load_test("digits"), settings.preprocess())
    assert (accuracy, loss) == (last["central-accuracy"], last["central-loss"])
    exported = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert exported.keys() == arrays.keys() and all(torch.equal(exported[k], arrays[k]) for k in arrays)
    checkpoint = load_file(str(tmp_path / "r" / "checkpoints" / "round-0002.safetensors"))
    assert all(torch.equal(checkpoint[k], arrays[k]) for k in arrays)  # raw θ only under resume/theta/
    if planner == "msfusion":  # the expectation rule: what is evaluated and exported is not θ
        theta = {k[len("resume/theta/"):]: v for k, v in checkpoint.items() if k.startswith("resume/theta/")}
        assert any(not torch.equal(theta[k], arrays[k]) for k in theta)


def test_a_drop_in_strategys_evaluate_fn_is_handed_the_model_it_returns():
    strategy = MSfusion(DIGITS.build, DIGITS.split_map, seed=0)
    test, preprocess = load_test("digits"), Settings().preprocess()
    scored = {}

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = DIGITS.build()
        model.load_state_dict(arrays.to_torch_state_dict())
        scored[server_round] = evaluate(model, test, preprocess)[1]
        assert scored[server_round] == evaluate(strategy.evaluated_model(), test, preprocess)[1]
        return MetricRecord({"accuracy": scored[server_round]})

    result = strategy.start(grid_of([0.5] * 3, {"local-examples": 64}), num_rounds=2, evaluate_fn=central)
    model = DIGITS.build()
    model.load_state_dict(result.arrays.to_torch_state_dict())
    assert evaluate(model, test, preprocess)[1] == scored[2]
