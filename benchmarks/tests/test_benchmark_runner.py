"""The benchmark runner end to end on the tiny experiment (digits, 2 rounds, 2 methods): real
`flwr run .` simulations, a well-formed summary.json, and finished runs skipped on a second call."""

import json


import pytest

from benchmarks.experiments import EXPERIMENTS
from benchmarks.run import check_selection, run_grid, write_results

KEYS = {
    "final_accuracy",
    "final_accuracy_sd",
    "tail_accuracy",
    "tail_accuracy_sd",
    "best_accuracy",
    "rounds",
    "last_fifth_gain",
    "last_fifth_trend",
    "never_trained_fraction",
    "train_count_cv",
    "rounds_to_target",
    "flops_to_target",
    "flops_per_participant_round",
    "bytes_per_participant_round",
    "wall_seconds",
    "seeds",
    # the ServerApp's own cost (benchmarks.run.server_profile)
    "server_seconds_median_first_half",
    "server_seconds_median_second_half",
    "server_rss_mb_first",
    "server_rss_mb_last",
    "server_peak_rss_mb_after_first_half",
    "server_peak_rss_mb_last",
}


@pytest.mark.parametrize("engine", ["local", "flwr"])
def test_tiny_experiment_summary(tmp_path, capsys, engine):
    exp = EXPERIMENTS["tiny"]
    work = tmp_path / "work"
    run_grid(exp, work, None, None, timeout=300.0, engine=engine)
    assert capsys.readouterr().out.count("completed in") == 2
    out = write_results(exp, work, tmp_path / "results", "python -m benchmarks.run tiny")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "tiny" and summary["target"] == exp.target
    assert summary["setting"] == exp.setting
    assert set(summary["methods"]) == {"msfusion-shipped", "small"}
    for name, m in summary["methods"].items():
        assert set(m) == KEYS, name
        assert 0.0 <= m["final_accuracy"] <= m["best_accuracy"] <= 1.0
        assert m["seeds"] == 1 and m["flops_per_participant_round"] > 0 and m["bytes_per_participant_round"] > 0
        assert m["rounds"] == 2 and m["final_accuracy_sd"] is None  # one seed: no sd
        assert m["rounds_to_target"] is None or 1 <= m["rounds_to_target"] <= 2
        assert (m["rounds_to_target"] is None) == (m["flops_to_target"] is None)
    # The small model costs a quarter of the full model per participant; msfusion at r = 0.5 too.
    assert summary["methods"]["small"]["never_trained_fraction"] is None  # dense: nothing to count
    assert 0.0 < summary["methods"]["msfusion-shipped"]["never_trained_fraction"] < 1.0
    ratio = summary["methods"]["msfusion-shipped"]["flops_per_participant_round"] / summary["methods"]["small"]["flops_per_participant_round"]
    assert 0.7 < ratio < 1.6, ratio
    assert (out / "results.md").read_text().count("| msfusion-shipped |") == 2  # the accuracy table and the server-cost table
    assert (out / "accuracy.png").stat().st_size > 1000 and len(list((out / "runs").glob("*.jsonl"))) == 2

    capsys.readouterr()
    run_grid(exp, work, None, None, timeout=300.0)  # everything finished: nothing reruns
    assert capsys.readouterr().out.count("finished, skipped") == 2
    # A fresh machine with only the committed results does not rerun them either.
    run_grid(exp, tmp_path / "fresh-machine", None, None, timeout=300.0, results=tmp_path / "results")
    assert capsys.readouterr().out.count("finished, skipped") == 2


def test_language_model_runs_are_summarised_by_perplexity():
    from benchmarks.run import summarise_run

    rows = [
        {"round": 0, "central-perplexity": 30000.0, "central-valid-perplexity": 30500.0},
        {"round": 1, "central-perplexity": 900.0, "central-valid-perplexity": 950.0, "flops-per-participant": 2.0},
        {"round": 2, "central-perplexity": 400.0, "central-valid-perplexity": 420.0, "flops-per-participant": 3.0},
        {"round": 3, "central-perplexity": 450.0, "central-valid-perplexity": 470.0, "flops-per-participant": 3.0},
    ]
    s = summarise_run(rows, target=500.0, metric="perplexity")
    assert s["final_perplexity"] == 450.0 and s["best_perplexity"] == 400.0 and s["final_valid_perplexity"] == 470.0
    assert s["rounds_to_target"] == 2 and s["flops_to_target"] == 5.0  # lower is better: first round ≤ 500
    assert "final_accuracy" not in s


def test_sigterm_stops_the_runner_and_every_flower_process(tmp_path):
    """Killing a grid mid-run must not leave its SuperLink, simulation or Ray workers running."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from msfusion.loopback import (
        REPO,
        cmdline,
        descendants,
        flower_pids,
        stop_flower_processes,
    )

    work = tmp_path / "work"
    runner = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.run", "tiny", "--engine", "flwr", "--work", str(work), "--results", str(tmp_path / "results")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    home = work / "tiny" / "flwr-home" / "msfusion-shipped-s0"
    try:
        deadline = time.monotonic() + 120
        while not any("flwr-simulation" in cmdline(p) for p in descendants(runner.pid)):
            assert runner.poll() is None and time.monotonic() < deadline, "the run never started its simulation"
            time.sleep(0.5)
        os.kill(runner.pid, signal.SIGTERM)
        assert runner.wait(timeout=60) == 128 + signal.SIGTERM
        assert flower_pids(home) == set()
    finally:  # whatever failed, leave nothing running
        runner.kill()
        stop_flower_processes(home)


def test_c1_summary_shape_gap_closed_and_headroom(tmp_path):
    """summary.json in the issue's shape, on synthetic curves with known answers."""
    from benchmarks.experiments import C1
    from benchmarks.run import summarise

    rounds = C1.setting["num-server-rounds"]
    finals = {"full": 0.70, "small-r0.5": 0.64, "small-r0.25": 0.58, "msfusion-shipped-r0.5": 0.67, "msfusion-shipped-r0.25": 0.61,
              "fedrolex-r0.25": 0.52, "heterofl-r0.25": 0.55, "fd-r0.25": 0.50}
    for arm, final in finals.items():
        for seed in C1.seeds_of(arm):
            acc = final + 0.01 * seed  # seeds 0, 1, 2 differ by a point each
            rows = [{"round": 0, "central-accuracy": 0.1}]
            rows += [{"round": t, "flops-per-participant": 1e9, "bytes-down-per-participant": 10.0, "bytes-up-per-participant": 5.0,
                      "never-trained-fraction": 0.2, "train-count-cv": 0.5, "round-seconds": 1.0, "eval-seconds": 0.0,
                      **({"central-accuracy": acc - (0.02 if t <= 0.8 * rounds else 0.0)} if t % 10 == 0 else {})}
                     for t in range(1, rounds + 1)]
            (tmp_path / f"{arm}-s{seed}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    s = summarise(C1, tmp_path)
    assert s["experiment"] == "C1" and s["setting"] == C1.setting
    assert set(s["methods"]) == set(finals)
    assert s["headroom"] == pytest.approx({"r0.5": 0.06, "r0.25": 0.12})
    full = s["methods"]["full"]
    assert full["seeds"] == 3 and full["final_accuracy"] == pytest.approx(0.71) and full["final_accuracy_sd"] == pytest.approx(0.01)
    assert full["last_fifth_gain"] == pytest.approx(0.02) and full["rounds"] == rounds and full["never_trained_fraction"] is None
    # Least squares over rounds 240..300: one point 0.02 low at 240, then flat: slope 0.6 / 2800 per round, over 60 rounds.
    assert full["last_fifth_trend"] == pytest.approx(0.6 / 2800 * 60)
    m = s["methods"]["msfusion-shipped-r0.25"]
    assert m["gap_closed"] == pytest.approx(0.25) and m["gap_closed_sd"] == pytest.approx(0.0, abs=1e-9) and m["gap_closed_seeds"] == 3
    assert m["tail_accuracy"] == pytest.approx(0.62) and m["gap_closed_tail"] == pytest.approx(0.25)
    assert s["headroom_tail"] == pytest.approx(s["headroom"])
    assert m["never_trained_fraction"] == 0.2 and m["flops_per_participant_round"] == 1e9 and m["bytes_per_participant_round"] == 15.0
    assert s["methods"]["fedrolex-r0.25"]["gap_closed"] == pytest.approx(-0.5) and s["methods"]["fedrolex-r0.25"]["seeds"] == 1
    assert "gap_closed" not in s["methods"]["small-r0.25"]
    assert m["crosses_small_round"] == 10 and s["methods"]["fedrolex-r0.25"]["crosses_small_round"] is None


def test_perplexity_gains_are_relative_improvements():
    from benchmarks.run import summarise_run

    q = 0.95  # the last fifth (rounds 80, 90, 100) lies on one log-line: 5 % better every 10 rounds
    ppl = {10: 400.0, 80: 200.0, 90: 200.0 * q, 100: 200.0 * q * q}
    rows = [{"round": t} | ({"central-perplexity": ppl[t], "central-valid-perplexity": ppl[t]} if t in ppl else {}) for t in range(1, 101)]
    s = summarise_run(rows, target=100.0, metric="perplexity")
    assert s["last_fifth_gain"] == pytest.approx(1 - q * q)  # (before − final) / before
    assert s["last_fifth_trend"] == pytest.approx(1 - q * q)


def test_a_selection_outside_the_grid_is_refused_by_name():
    c1p = EXPERIMENTS["C1P"]
    check_selection(c1p, {"small"}, {0}, {"P8"})  # in the grid: accepted
    for methods, seeds, variants, named in (
        ({"smal"}, None, None, "no method smal"),
        (None, {0, 7}, None, "no seed 7"),
        (None, None, {"P8", "P3"}, "no variant P3; its variants are P16, P4, P8"),
    ):
        with pytest.raises(ValueError, match=named):
            check_selection(c1p, methods, seeds, variants)


def test_settings_overrides_for_a_smoke_run():
    from benchmarks.run import parse_overrides

    assert parse_overrides(["num-server-rounds=2", "device='cpu'", "planner=small", "lr=0.1"]) == {
        "num-server-rounds": 2, "device": "cpu", "planner": "small", "lr": 0.1,
    }
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        parse_overrides(["rounds"])


def test_crossing_round_is_where_a_method_stays_above_small():
    from benchmarks.run import crossing_round

    rounds = [0, 10, 20, 30, 40]
    assert crossing_round(rounds, [0.1, 0.3, 0.2, 0.5, 0.6], [0.1, 0.2, 0.3, 0.4, 0.5]) == 30  # the dip at 20 resets it
    assert crossing_round(rounds, [0.1, 0.3, 0.4, 0.5, 0.4], [0.1, 0.2, 0.3, 0.4, 0.5]) is None  # ends below


def test_a_run_with_duplicated_rounds_is_refused():
    from benchmarks.run import summarise_run

    rows = [{"round": 0, "central-accuracy": 0.1}, {"round": 1, "central-accuracy": 0.2}, {"round": 1, "central-accuracy": 0.3}]
    with pytest.raises(ValueError, match="unique and increasing"):
        summarise_run(rows, target=0.5)


def test_systems_costs_are_steady_state_medians_and_ratios_to_full(tmp_path):
    from benchmarks.systems import systems_summary

    def row(t, flops, scale):
        return {
            "round": t, "round-seconds": 10.0 * t, "eval-seconds": 1.0, "server-plan-slice-seconds": 0.1,
            "server-aggregate-seconds": 0.4, "build-seconds-per-participant": 0.05 * t, "train-seconds-per-participant": 2.0,
            "flops-per-participant": flops, "bytes-down-per-participant": scale, "bytes-up-per-participant": scale,
        }

    for name, flops, scale in (("full", 4e9, 100.0), ("small", 1e9, 25.0)):
        rows = [row(1, 99 * flops, 99 * scale)] + [row(t, flops, scale) for t in (2, 3, 4)]  # round 1 is ignored
        (tmp_path / f"{name}-s0.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "unfinished-s0.jsonl").write_text(json.dumps(row(2, 1.0, 1.0)))
    s = systems_summary(tmp_path, 0.5, rounds=4)
    assert set(s["methods"]) == {"full", "small"}
    small = s["methods"]["small"]
    assert small["round_s"] == 30.0 and small["client_build_s"] == pytest.approx(0.15)
    assert small["build_over_train"] == pytest.approx(0.075) and small["server_share_of_round"] == pytest.approx(0.5 / 30)
    assert small["flops_vs_full"] == pytest.approx(0.25) and small["bytes_vs_full"] == pytest.approx(0.25)


def test_c1s_shipped_arms_are_the_apps_default_msfusion():
    """The C1 runs reported as the app's default are its defaults on C1's setting: if a default
    moves, this says the committed runs no longer show it."""
    from benchmarks.experiments import C1, C1_SETTING
    from benchmarks.run import run_config
    from msfusion_app.settings import Settings

    variant = C1.grid()[0][2]
    for r in ("0.5", "0.25"):
        shipped = Settings.from_mapping(run_config(C1, f"msfusion-shipped-r{r}", 0, variant))
        assert shipped == Settings.from_mapping(C1_SETTING | {"split-ratio-tiers": r, "seed": 0})


def test_every_arm_of_every_experiment_is_a_valid_run_config():
    """An arm the app would refuse (a key it no longer has, a value it no longer takes) cannot run."""
    from benchmarks.experiments import EXPERIMENTS
    from benchmarks.run import run_config
    from msfusion_app.settings import Settings

    for exp in EXPERIMENTS.values():
        for method, seed, variant in exp.grid():
            Settings.from_mapping(run_config(exp, method, seed, variant))


def test_engine_agreement_compares_runs_of_the_same_name(tmp_path):
    from benchmarks.engine_agreement import compare

    (tmp_path / "runs").mkdir()
    (tmp_path / "flwr").mkdir()
    local = [{"round": 0, "central-accuracy": 0.1}, {"round": 5}, {"round": 10, "central-accuracy": 0.5}, {"round": 20, "central-accuracy": 0.6}]
    flwr = [{"round": 0, "central-accuracy": 0.1}, {"round": 10, "central-accuracy": 0.42}, {"round": 20, "central-accuracy": 0.61}]
    (tmp_path / "runs" / "a-s0.jsonl").write_text("\n".join(json.dumps(r) for r in local))
    (tmp_path / "flwr" / "a-s0.jsonl").write_text("\n".join(json.dumps(r) for r in flwr))
    [row] = compare(tmp_path)
    assert (row["run"], row["last_round"], row["local"], row["flwr"], row["max_diff_round"]) == ("a-s0", 20, 0.6, 0.61, 10)
    assert row["max_diff"] == pytest.approx(0.08)
    (tmp_path / "flwr" / "b-s0.jsonl").write_text(json.dumps({"round": 3, "central-accuracy": 0.2}))
    (tmp_path / "runs" / "b-s0.jsonl").write_text(json.dumps({"round": 4, "central-accuracy": 0.2}))
    with pytest.raises(ValueError, match="b-s0.jsonl: no evaluated round in common"):
        compare(tmp_path)
    # A language-model experiment is compared on its perplexity, which the accuracy runs lack.
    with pytest.raises(ValueError, match="a-s0.jsonl: no evaluated round in common"):
        compare(tmp_path, "perplexity")


def test_lm2_summary_gap_closed_in_log_perplexity_and_the_token_facts(tmp_path, monkeypatch):
    import math

    import benchmarks.run as runner
    from benchmarks.experiments import EXPERIMENTS

    monkeypatch.setattr(runner, "_plot", lambda *args, **kwargs: None)
    exp = EXPERIMENTS["LM2"]
    rounds, every = exp.setting["num-server-rounds"], exp.setting["eval-every"]
    finals = {"full": 100.0, "small": 400.0, "fedrolex": 200.0}
    work = tmp_path / "work"
    for arm, ppl in finals.items():
        for seed in exp.seeds_of(arm):
            rows = [{"round": 0, "central-perplexity": 8000.0, "central-valid-perplexity": 8000.0}]
            rows += [{"round": t, "flops-per-participant": 1e9, "bytes-down-per-participant": 4.0, "bytes-up-per-participant": 4.0,
                      **({"central-perplexity": ppl, "central-valid-perplexity": ppl} if t % every == 0 else {})} for t in range(1, rounds + 1)]
            (work / "runs" / f"{arm}-s{seed}").mkdir(parents=True)
            (work / "runs" / f"{arm}-s{seed}" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "results" / "LM2"
    out.mkdir(parents=True)
    tokens = {"tokenizers": {"bpe-2048": {"unigram_test_perplexity": 727.0}}, "model": {"blocks_param_fraction": 0.75}}
    (out / "tokens.json").write_text(json.dumps(tokens))
    runner.write_results(exp, work, tmp_path / "results", "cmd")
    s = json.loads((out / "summary.json").read_text())
    assert s["unigram_perplexity"] == 727.0 and s["blocks_param_fraction"] == 0.75
    assert s["headroom"] == pytest.approx({"r0.5": math.log(4.0)})  # log ppl_small − log ppl_full
    m = s["methods"]["fedrolex"]
    assert m["final_perplexity"] == 200.0 and m["seeds"] == 1 and m["gap_closed"] == pytest.approx(0.5)  # halfway in log ppl
    assert m["crosses_small_round"] == every  # lower than small's perplexity from the first evaluation
    assert {"final_perplexity_sd", "last_fifth_gain", "flops_per_participant_round", "bytes_per_participant_round"} <= set(m)
