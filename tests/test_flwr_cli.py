"""`flwr run .` end to end: the default app (local simulation) for 2 rounds, as a user runs it.

`flwr run . --stream` exits 0 even when the run fails, so the run's status is read back with
`flwr ls --format json`. `flwr run .` spawns a detached local SuperLink (and its SuperExec): the
test stops them by PID (msfusion/loopback.py) and checks that nothing of its FLWR_HOME is left.
"""

from __future__ import annotations

from msfusion.loopback import (
    REPO,
    flower_cleanup,
    flower_env,
    local_superlink_pids,
    newest_run,
    pids_with_flwr_home,
    read_jsonl,
    run_cli,
    stop_flower_processes,
)

RUN_TIMEOUT = 300.0


def test_flwr_run_default_app_two_rounds(tmp_path):
    home, out = tmp_path / "flwr-home", tmp_path / "runs"
    env = flower_env(home)
    with flower_cleanup(home):
        cmd = ["flwr", "run", ".", "--stream", "--run-config", f"num-server-rounds=2 output-dir='{out}' run-name='cli'"]
        rc, output = run_cli(cmd, tmp_path / "flwr-run.log", env, RUN_TIMEOUT, cwd=REPO)
        assert rc == 0, f"flwr run exited with {rc}:\n{output[-4000:]}"
        # It really used its own detached SuperLink, on this test's port, for this FLWR_HOME.
        assert local_superlink_pids(home), f"no local SuperLink found for {home}"
        assert f"127.0.0.1:{env['FLWR_LOCAL_SUPERLINK_HTTP_API_PORT']}" in output

        run = newest_run(env)  # before cleanup: `flwr ls` would start a new local SuperLink
        assert run["status"] == "finished:completed", f"run {run.get('run-id')}: {run}\n{output[-4000:]}"

        run_dir = out / "cli"
        rows = read_jsonl(run_dir / "metrics.jsonl")
        assert [r["round"] for r in rows] == [0, 1, 2], rows
        for r in rows[1:]:
            assert r["accepted"] > 0, r
            assert r["failed"] == 0 and r["rejected"] == 0, r
        assert (run_dir / "metrics.csv").is_file()
        assert (run_dir / "config.json").is_file()
        assert (run_dir / "checkpoints" / "round-0002.safetensors").is_file()

        left = stop_flower_processes(home)
        assert not left, f"processes survived SIGKILL: {left}"
        assert not pids_with_flwr_home(home) and not local_superlink_pids(home)


def test_the_app_bundle_carries_the_apps_and_stays_under_flowers_limit(tmp_path):
    """`flwr run .` bundles the project first; committed results (13 MB of metrics under docs/)
    once pushed the bundle past Flower's 10 MB limit and every run failed to start."""
    import subprocess
    import zipfile

    subprocess.run(["flwr", "build", "--app", str(REPO)], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    (fab,) = tmp_path.glob("*.fab")
    names = zipfile.ZipFile(fab).namelist()
    assert fab.stat().st_size < 10 * 1024 * 1024
    assert {"server_app/app.py", "client_app/app.py", "msfusion_core/method/planner.py", "pyproject.toml"} <= set(names)
    assert not any(n.startswith(("docs/", "tests/", "benchmarks/")) for n in names)


def test_a_bad_setting_ends_the_run_failed_in_one_line_that_names_it(tmp_path):
    home, out = tmp_path / "flwr-home", tmp_path / "runs"
    env = flower_env(home)
    with flower_cleanup(home):
        cmd = ["flwr", "run", ".", "--stream", "--run-config", f"planner='msfusoin' output-dir='{out}' run-name='bad'"]
        rc, output = run_cli(cmd, tmp_path / "flwr-run.log", env, RUN_TIMEOUT, cwd=REPO)
        assert rc == 0, output[-3000:]  # `--stream` exits 0 whatever the run did
        run = newest_run(env)
    assert run["status"] == "finished:failed", run
    assert "msfusoin" in run["status-details"] and "planner" in run["status-details"], run
    lines = [line for line in output.splitlines() if line.strip()]
    failed = [i for i, line in enumerate(lines) if "MSfusion run FAILED before round 1: ValueError:" in line]
    assert failed and "msfusoin" in lines[failed[-1]], output[-3000:]
    after = lines[failed[-1] + 1 :]
    assert not any(word in line for line in after for word in ("Traceback", "Exit Code", "raised an exception")), after
    assert "Traceback" not in output, output[-3000:]
    assert "msfusoin" in (out / "bad" / "FAILED").read_text()
