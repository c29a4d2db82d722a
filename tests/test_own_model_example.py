"""docs/examples/own_model/: the strategy and ClientApp factory with a model the project does not
ship, in process and as users run it, through `flwr run` (a failing variant must end `failed`)."""

import importlib.util
import shutil
from pathlib import Path

from msfusion.loopback import flower_cleanup, flower_env, newest_run, run_cli
from flwr.app import MessageType

from recording_grid import RecordingGrid as LocalGrid

APP = Path(__file__).resolve().parents[1] / "docs" / "examples" / "own_model"


def load_example():
    spec = importlib.util.spec_from_file_location("own_model", APP / "own_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_own_model_example_trains_with_heterogeneous_nodes():
    ex = load_example()
    grid = LocalGrid(
        {7: {"partition-id": 0, "num-partitions": 3, "split-ratio": 1.0},
         8: {"partition-id": 1, "num-partitions": 3, "split-ratio": 0.5},
         9: {"partition-id": 2, "num-partitions": 3, "split-ratio": 0.25}},
        app=ex.client,
    )
    result = ex.run_server(grid, num_rounds=4)
    acc = {r: m["accuracy"] for r, m in result.evaluate_metrics_serverapp.items()}
    assert acc[4] > acc[0] + 0.4, acc
    # The r = 0.25 node really received a quarter of the channels and hidden units.
    proj = grid.last_sent[9, MessageType.TRAIN].content.array_records["arrays"]["proj.weight"]
    assert tuple(proj.shape) == (16, 4 * 16)


def test_simulated_nodes_get_capacities_from_tiers():
    """Under `flwr run` a simulated node declares no split-ratio: node_capacity's tiers decide."""
    ex = load_example()
    grid = LocalGrid({n + 1: {"partition-id": n, "num-partitions": 3} for n in range(3)}, app=ex.client)
    ex.run_server(grid, num_rounds=1)
    sent = {n: grid.last_sent[n, MessageType.TRAIN] for n in (1, 2, 3)}
    assert [tuple(sent[n].content.array_records["arrays"]["conv.weight"].shape)[0] for n in (1, 2, 3)] == [16, 8, 4]


def flwr_run_app(app: Path, tmp_path: Path, rounds: int) -> tuple[dict, str]:
    env = flower_env(tmp_path / "flwr-home")
    with flower_cleanup(tmp_path / "flwr-home"):
        cmd = ["flwr", "run", str(app), "--stream", "--run-config", f"num-server-rounds={rounds}", "--federation-config", "num-supernodes=3"]
        rc, output = run_cli(cmd, tmp_path / "flwr-run.log", env, 300.0, cwd=app)
        assert rc == 0, output[-3000:]
        return newest_run(env), output


def test_the_documented_app_runs_through_flwr_run(tmp_path):
    run, output = flwr_run_app(APP, tmp_path, rounds=2)
    assert run["status"] == "finished:completed", (run, output[-3000:])
    # One progress line per round; Flower's per-round metric dictionaries stay quiet.
    assert "[round 2] accuracy=" in output and "overlap=" in output, output[-3000:]
    assert "Aggregated MetricRecord" not in output, output[-3000:]


def test_a_clientapp_that_always_fails_ends_the_run_failed_with_the_nodes_reason(tmp_path):
    app = tmp_path / "app"
    shutil.copytree(APP, app)
    (app / "broken.py").write_text(
        "import dataclasses\n"
        "import own_model\n"
        "from msfusion import Participant, make_client_app\n\n"
        "def setup(context):\n"
        "    node = own_model.node_setup(context)\n"
        "    return dataclasses.replace(node, participant=Participant(own_model.TinyNet, own_model.SPLIT_MAP, 'nohead'))\n\n"
        "client = make_client_app(setup)\n"
    )
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('clientapp = "own_model:client"', 'clientapp = "broken:client"'))
    run, output = flwr_run_app(app, tmp_path, rounds=6)
    assert run["status"] == "finished:failed", (run, output[-3000:])
    # The reason reaches `flwr ls` (its status details) and the `--stream` output.
    reason = "no valid reply for 3 rounds (up to round 3); nodes said: ValueError: representation_layer 'nohead' is not a module of TinyNet"
    assert reason in run["status-details"], run
    assert reason in output, output[-3000:]
