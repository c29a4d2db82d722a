"""A real Ray simulation in process (flwr.simulation.run_simulation): 3 rounds, 4 nodes of
different capacities. The ClientApp handlers are the project's own; a thin wrapper gives them the
run config (run_simulation passes an empty one) and records what each node received."""

import json
import os
import sys
from pathlib import Path
from typing import ClassVar

import ray.cloudpickle
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

import client_app.app as client
from msfusion_app.settings import Settings
from msfusion_core.local.participant import Participant
from server_app.app import run
from server_app.strategy import MSfusion

RUN_CONFIG = {"split-ratio-tiers": "1.0,0.5,0.5,0.25", "local-examples": 128, "num-server-rounds": 3}
RECORD_DIR = os.environ.get("MSFUSION_TEST_RECORD_DIR", "")

wrapped = ClientApp()


def _with_config(handler, record: bool):
    def call(msg: Message, context: Context) -> Message:
        # Same node config and persistent state, with the test's run config.
        context = Context(context.run_id, context.node_id, context.node_config, context.state, dict(RUN_CONFIG))
        if record:
            shapes = {k: list(a.shape) for k, a in msg.content.array_records["arrays"].items()}
            line = {"node": context.node_config["partition-id"], "plan": msg.content.config_records["plan"]["plan"], "shapes": shapes}
            with open(Path(RECORD_DIR) / f"{os.getpid()}.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
        return handler(msg, context)

    return call


wrapped.query()(_with_config(client.app, False))
wrapped.train()(_with_config(client.app, True))


class RecordingMSfusion(MSfusion):
    """Snapshots θ around every aggregation to check which coordinates changed."""

    snapshots: ClassVar[list] = []

    def aggregate_train(self, server_round, replies):
        before = {k: self.core.state[k].clone() for k in self.core.param_keys}
        out = super().aggregate_train(server_round, replies)
        self.snapshots.append((server_round, before, {k: self.core.state[k].clone() for k in self.core.param_keys}))
        return out


def test_ray_simulation_four_nodes_three_rounds(tmp_path, monkeypatch):
    record_dir = tmp_path / "received"
    record_dir.mkdir()
    monkeypatch.setattr(sys.modules[__name__], "RECORD_DIR", str(record_dir))
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/
    settings = Settings.from_mapping(RUN_CONFIG | {"output-dir": str(tmp_path), "run-name": "sim"})
    family = settings.family()
    strategy = RecordingMSfusion(family.build, family.split_map, settings.make_planner(), seed=0)
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        run(grid, settings, strategy)

    run_simulation(server_app=server, client_app=wrapped, num_supernodes=4, backend_config={"client_resources": {"num_cpus": 1}})

    rows = [json.loads(line) for line in (tmp_path / "sim" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert all(r["accepted"] == 4 and r["failed"] == 0 and r["rejected"] == 0 for r in rows[1:])
    assert sorted(info.capacity for info in strategy.nodes.values()) == [0.25, 0.5, 0.5, 1.0]

    # Every node received exactly the shapes its plan implies.
    part = Participant(family.build, family.split_map, family.representation_layer)
    received = [json.loads(line) for f in record_dir.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(received) == 12
    for item in received:
        plan = part.read_plan(json.loads(item["plan"]))
        assert plan.capacity == settings.capacity_tiers()[item["node"] % len(settings.capacity_tiers())]
        for key, shape in part.full_shapes.items():
            assert tuple(item["shapes"][key]) == part.slicer.sub_shape(key, shape, plan.unit_indices())

    # The global model changed only at coordinates some node covered (and did change).
    assert [s[0] for s in strategy.snapshots] == [1, 2, 3]
    for server_round, before, after in strategy.snapshots:
        plan = strategy.rounds[server_round].plan
        changed_any = False
        for key, old in before.items():
            covered = torch.zeros(old.numel(), dtype=torch.bool)
            for pp in plan.participants.values():
                pos = strategy.core.slicer.flat_positions(key, old.shape, pp.unit_indices())
                covered[pos if pos is not None else slice(None)] = True
            diff = after[key].reshape(-1) != old.reshape(-1)
            assert not diff[~covered].any(), key
            changed_any |= bool(diff.any())
        assert changed_any
