"""Crash and resume with real processes: SIGKILL a `flwr run .` after round 2 of 4, resume it with
`resume-from`, and compare the final global model with an uninterrupted run's, bit for bit.

Bit-exactness needs the contrastive term off (contrastive-mu=0): its negative is each node's
previous sub-model, kept in the node's Flower state, which a crash of the whole simulation loses —
the first resumed round then trains without a negative, exactly like a node's first round.
Everything else (θ, the overlap schedule, node capacities) is in the checkpoint, and node sampling,
data subsets and client seeds are functions of (seed, round)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from safetensors.torch import load_file

from msfusion.loopback import (
    REPO,
    flower_cleanup,
    flower_env,
    local_superlink_pids,
    newest_run,
    pids_with_flwr_home,
    read_jsonl,
    run_cli,
    started,
)

CONFIG = "num-server-rounds=4 contrastive-mu=0.0 local-epochs=1 overlap-schedule='adaptive'"


def flwr_cmd(extra: str) -> list[str]:
    return ["flwr", "run", ".", "--stream", "--run-config", f"{CONFIG} {extra}"]


def run_to_end(tmp_path, name: str, extra: str) -> dict:
    home = tmp_path / f"home-{name}"
    env = flower_env(home)
    with flower_cleanup(home):
        rc, out = run_cli(flwr_cmd(extra), tmp_path / f"{name}.log", env, 300.0, cwd=REPO)
        assert rc == 0, out[-3000:]
        run = newest_run(env)
    assert run["status"] == "finished:completed", out[-3000:]
    return run


def test_sigkill_after_round_two_then_resume_is_bit_identical(tmp_path):
    out = tmp_path / "runs"
    run_to_end(tmp_path, "full", f"output-dir='{out}' run-name='full'")

    # Start the same run and SIGKILL every process of it once round 2's checkpoint is complete.
    home = tmp_path / "home-crash"
    env = flower_env(home)
    marker = out / "crash" / "checkpoints" / "round-0002.json"
    with flower_cleanup(home), started(flwr_cmd(f"output-dir='{out}' run-name='crash'"), tmp_path / "crash.log", env) as proc:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert time.monotonic() < deadline, proc.tail()
            assert proc.popen.poll() is None or marker.exists(), proc.tail()
            time.sleep(0.2)
        victims = pids_with_flwr_home(home) | local_superlink_pids(home) | {proc.pid}
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    rows = read_jsonl(out / "crash" / "metrics.jsonl")
    assert rows[-1]["round"] < 4, "the run finished before it could be killed"

    run_to_end(tmp_path, "resume", f"output-dir='{out}' run-name='crash' resume-from='{out / 'crash'}'")
    resumed = read_jsonl(out / "crash" / "metrics.jsonl")
    assert [r["round"] for r in resumed] == [0, 1, 2, 3, 4]
    full = load_file(str(out / "full" / "checkpoints" / "round-0004.safetensors"))
    again = load_file(str(out / "crash" / "checkpoints" / "round-0004.safetensors"))
    assert full.keys() == again.keys()
    different = [k for k in full if not (full[k] == again[k]).all()]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_resume_refuses_a_changed_config(tmp_path):
    from msfusion.local_grid import LocalGrid

    from msfusion_app.settings import Settings
    from server_app.app import make_strategy, resume, run

    grid = LocalGrid({1: {"partition-id": 0, "num-partitions": 1, "split-ratio": 0.5}})
    settings = Settings(num_server_rounds=1, output_dir=str(tmp_path), run_name="r", contrastive_mu=0.0)
    run(grid, settings)
    changed = Settings(num_server_rounds=2, contrastive_mu=0.5, resume_from=str(tmp_path / "r"))
    with pytest.raises(ValueError, match=r"contrastive-mu \(was 0.0, now 0.5\)"):
        resume(changed, make_strategy(changed))
    with pytest.raises(ValueError, match="not a run directory"):
        resume(Settings(resume_from=str(tmp_path)), make_strategy(Settings()))
    # A setting added to the app after the run was recorded: accepted at its default, refused otherwise.
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    del saved["inclusion-scaling"]
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    same = Settings(num_server_rounds=2, contrastive_mu=0.0, resume_from=str(tmp_path / "r"))
    assert resume(same, make_strategy(same)).rows[-1]["round"] == 1
    unscaled = Settings(num_server_rounds=2, contrastive_mu=0.0, inclusion_scaling=False, resume_from=str(tmp_path / "r"))
    with pytest.raises(ValueError, match=r"inclusion-scaling \(was None, now False\)"):
        resume(unscaled, make_strategy(unscaled))


def test_a_new_run_never_appends_to_an_existing_run_directory(tmp_path):
    from msfusion_app.runlog import RunLog

    RunLog(tmp_path / "r", {}).append({"round": 0})
    with pytest.raises(ValueError, match="already holds a run"):
        RunLog(tmp_path / "r", {})


def test_two_writers_never_share_a_run_directory(tmp_path):
    """A second ServerApp on the same run dir (e.g. a SuperLink re-launching a stale run beside a
    new one) is refused, whether it starts fresh or resumes; the lock dies with its holder."""
    from msfusion_app.runlog import RunLog

    writer = RunLog(tmp_path / "r", {})
    with pytest.raises(RuntimeError, match=rf"being written by another process \(pid {os.getpid()}\)"):
        RunLog.resume(tmp_path / "r", 0)
    with pytest.raises(RuntimeError, match="must not share a run-name"):
        RunLog(tmp_path / "r", {})
    writer.append({"round": 0})
    del writer  # closing the lock file releases it, as the OS does when a crashed run's process dies
    assert [r["round"] for r in RunLog.resume(tmp_path / "r", 0).rows] == [0]


def test_resuming_from_the_round_zero_checkpoint_logs_round_zero_once(tmp_path):
    """A run killed after its initial evaluation resumes at Flower round 0, whose row is logged."""
    from msfusion.local_grid import LocalGrid

    from msfusion_app.settings import Settings
    from server_app.app import run

    grid = LocalGrid({1: {"partition-id": 0, "num-partitions": 1, "split-ratio": 0.5}})
    run(grid, Settings(num_server_rounds=1, output_dir=str(tmp_path), run_name="r", contrastive_mu=0.0))
    run_dir = tmp_path / "r"
    for f in (run_dir / "checkpoints").glob("round-0001.*"):
        f.unlink()  # as if killed before round 1 ended
    run(grid, Settings(num_server_rounds=1, contrastive_mu=0.0, resume_from=str(run_dir)))
    rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1]


def test_a_damaged_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    """The README promises the last complete round: a truncated newest checkpoint falls back to
    the one before it instead of failing with 'invalid header length'."""
    from msfusion.local_grid import LocalGrid

    from msfusion_app.settings import Settings
    from msfusion_app.runlog import latest_checkpoint
    from server_app.app import run

    grid = LocalGrid({1: {"partition-id": 0, "num-partitions": 1, "split-ratio": 0.5}})
    run(grid, Settings(num_server_rounds=2, output_dir=str(tmp_path), run_name="r", contrastive_mu=0.0))
    newest = tmp_path / "r" / "checkpoints" / "round-0002.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # cut short
    with caplog.at_level("WARNING"):
        checkpoint = latest_checkpoint(tmp_path / "r")
    assert checkpoint.server_round == 1
    assert f"skipping unreadable checkpoint {newest}" in caplog.text
    run(grid, Settings(num_server_rounds=2, contrastive_mu=0.0, resume_from=str(tmp_path / "r")))
    rounds = [json.loads(line)["round"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2]


def test_a_failed_run_is_marked_and_leaves_no_lock(tmp_path):
    from msfusion.local_grid import LocalGrid

    from msfusion import make_client_app
    from msfusion_app.settings import Settings
    from server_app.app import make_strategy, run

    def no_node(context):
        raise ValueError("this node has no data")

    settings = Settings(num_server_rounds=3, output_dir=str(tmp_path), run_name="r")
    grid = LocalGrid({1: {"partition-id": 0, "num-partitions": 1}}, app=make_client_app(no_node))
    strategy = make_strategy(settings)
    strategy.failures.max_failed_rounds = 1
    with pytest.raises(RuntimeError, match="this node has no data"):
        run(grid, settings, strategy)
    assert "no valid reply for 1 round (up" in (tmp_path / "r" / "FAILED").read_text()
    assert not (tmp_path / "r" / ".lock").exists()
    # A finished run leaves no lock either, and a resumed one clears the FAILED mark.
    ok = LocalGrid({1: {"partition-id": 0, "num-partitions": 1, "split-ratio": 0.5}})
    run(ok, Settings(num_server_rounds=1, resume_from=str(tmp_path / "r")))
    assert not (tmp_path / "r" / "FAILED").exists() and not (tmp_path / "r" / ".lock").exists()


def test_a_schedule_checkpoints_its_state_not_its_configuration():
    from msfusion_core.method.overlap import AdaptiveOverlap

    schedule = AdaptiveOverlap(0.3)
    schedule.observe_shift(2.0)
    saved = schedule.state_dict()
    assert saved == {"current": pytest.approx(0.5)}  # o_t; o_0 is configuration
    again = AdaptiveOverlap(0.3)
    again.load_state_dict(saved)
    assert again.overlap(2) == schedule.overlap(2) and again.start == 0.3


def test_a_run_resumed_with_more_rounds_continues_its_count(tmp_path):
    from server_app.app import make_strategy, run
    from msfusion.local_grid import LocalGrid, simulated_node_configs

    from msfusion_app.settings import Settings

    base = {"contrastive_mu": 0.0, "local_examples": 16}
    grid = LocalGrid(simulated_node_configs(2), Settings(**base).to_mapping())
    run(grid, Settings(num_server_rounds=3, output_dir=str(tmp_path), run_name="r", **base))
    resumed = Settings(num_server_rounds=6, resume_from=str(tmp_path / "r"), **base)
    strategy = make_strategy(resumed)
    run(LocalGrid(simulated_node_configs(2), resumed.to_mapping()), resumed, strategy)
    assert strategy.core.resumed_after == 3 and sorted(strategy.rounds) == [4, 5, 6]
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(7))
