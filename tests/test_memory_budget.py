"""Resource-constrained nodes: a node's import footprint, its partition cache, the training
footprint it measures, and the capacity a ``memory-budget-mb`` affords.

The cgroup-capped federation itself is a benchmark (``python -m benchmarks.capped_federation``);
nothing here needs cgroups.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import client_app.app as client
from client_app import footprint
from client_app.footprint import Footprint, choose_capacity
from msfusion_app import protocol
from msfusion_app.settings import Settings
from msfusion_core.data import images, load_partition
from msfusion_core.data.tensors import TensorData
from msfusion_core.method import submodel
from msfusion_core.models import get_family
from server_app.app import run
from msfusion.local_grid import LocalGrid

DIGITS = {"model": "digits-cnn", "dataset": "digits", "partitioner": "iid"}


def fp(r: float, peak: float) -> Footprint:
    return Footprint(r, 32, 250.0, peak - 250.0, peak, 0.01, 1e6, 1000, 1000)


MEASURED = {0.125: fp(0.125, 430), 0.25: fp(0.25, 530), 0.5: fp(0.5, 730), 1.0: fp(1.0, 1250)}


# -- the choice, on given measurements ------------------------------------------------------------
@pytest.mark.parametrize(("budget", "expected"), [(2000, 1.0), (1250, 1.0), (1249, 0.5), (600, 0.25), (430, 0.125)])
def test_the_largest_capacity_whose_peak_fits_the_budget(budget, expected):
    assert choose_capacity(budget, MEASURED) == expected


def test_split_ratio_caps_what_a_budget_allows():
    assert choose_capacity(2000, MEASURED, cap=0.5) == 0.5
    assert choose_capacity(2000, MEASURED, cap=0.3) == 0.25


def test_a_killed_measurement_does_not_fit_whatever_the_budget():
    assert choose_capacity(10_000, {0.125: fp(0.125, 430), 0.25: fp(0.25, 530), 0.5: None}) == 0.25


def test_a_budget_below_every_tier_is_refused_naming_the_smallest_footprint():
    with pytest.raises(ValueError, match=r"memory-budget-mb=300 is below the smallest training footprint: capacity 0.125 needs a peak of 430 MB"):
        choose_capacity(300, MEASURED)
    with pytest.raises(ValueError, match=r"capacity 0.125 needs more \(its measurement was killed\)"):
        choose_capacity(300, {0.125: None})


def test_a_bad_budget_is_refused_by_name():
    node = {"partition-id": 0, "num-partitions": 2, "memory-budget-mb": -5}
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=Settings(**{}).to_mapping())
    with pytest.raises(ValueError, match="memory-budget-mb must be a positive number of MB, got -5"):
        client.setup_from_run_config(context)


# -- the capacity reply ---------------------------------------------------------------------------
def query(node_config: dict, run_config: dict) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config)
    msg = Message(protocol.capacity_query(), dst_node_id=7, message_type=MessageType.QUERY)
    return client.app(msg, context)


def test_the_capacity_reply_carries_the_capacity_the_budget_affords(tmp_path):
    run_config = Settings.from_mapping(DIGITS).to_mapping()
    node = {"partition-id": 1, "num-partitions": 4, "cache-dir": str(tmp_path)}

    # Measured for real (four fresh processes): a digits CNN fits 10 GB at every tier.
    reply = query(node | {"memory-budget-mb": 10_000}, run_config)
    assert not reply.has_error(), reply.error
    assert protocol.read_capacity_reply(reply.content, 0.5, "node") == (1, 1.0)
    measured = json.loads((tmp_path / "footprints.json").read_text())
    assert len(measured) == 4 and all(0 < f["baseline_mb"] < f["peak_mb"] for f in measured.values())
    assert (tmp_path / "partitions").is_dir() and len(list((tmp_path / "partitions").iterdir())) == 1

    # A split-ratio caps it; the measurements are read back, not repeated, in a run with other
    # server-side settings too.
    other_run = Settings.from_mapping(DIGITS | {"num-server-rounds": 50, "planner": "fedrolex"}).to_mapping()
    reply = query(node | {"memory-budget-mb": 10_000, "split-ratio": 0.25}, other_run)
    assert protocol.read_capacity_reply(reply.content, 0.5, "node") == (1, 0.25)
    assert json.loads((tmp_path / "footprints.json").read_text()) == measured

    # Given measurements (as the cache holds them), a budget between two tiers picks the lower.
    keys = footprint.tier_keys(client.setup_from_run_config, run_config, node, list(MEASURED), footprint.MEASURED_STEPS)
    given = {keys[r]: dataclasses.asdict(f) for r, f in MEASURED.items()}
    (tmp_path / "footprints.json").write_text(json.dumps(given))
    reply = query(node | {"memory-budget-mb": 700}, run_config)
    assert protocol.read_capacity_reply(reply.content, 0.5, "node") == (1, 0.25)

    # Too small for any tier: an error reply that says what the smallest tier needs.
    reply = query(node | {"memory-budget-mb": 100}, run_config)
    assert reply.has_error() and "below the smallest training footprint: capacity 0.125 needs a peak of 430 MB" in reply.error.reason


def test_a_node_whose_budget_fits_no_tier_is_left_out_and_the_run_goes_on(tmp_path):
    settings = Settings.from_mapping(DIGITS | {"num-server-rounds": 2, "output-dir": str(tmp_path / "runs"), "run-name": "budget", "local-examples": 64})
    nodes = {n: {"partition-id": n - 1, "num-partitions": 3} for n in (1, 2, 3)}
    nodes[3] |= {"memory-budget-mb": 1, "cache-dir": str(tmp_path / "node3")}
    grid = LocalGrid(nodes, settings.to_mapping())
    run(grid, settings)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "budget" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["participants"] == 2 and r["accepted"] == 2 and r["applied"] == 1, r


def test_a_budget_needs_a_setup_a_child_process_can_import():
    node = {"partition-id": 0, "num-partitions": 2}
    with pytest.raises(ValueError, match="memory-budget-mb needs a module-level setup function .* not '.*<lambda>'"):
        footprint.capacity_for_budget(lambda context: None, {}, node, 500.0)


def test_measuring_a_setup_that_fails_says_why():
    node = {"partition-id": 0, "num-partitions": 2}
    with pytest.raises(RuntimeError, match="capacity 0.5 failed: ValueError: model must be one of .*; got 'nope'"):
        footprint.measure("client_app.app:setup_from_run_config", {"model": "nope"}, node, 0.5, steps=2)


# -- what a node process holds ----------------------------------------------------------------------
def test_importing_the_client_app_imports_no_data_or_plotting_library():
    heavy = ["datasets", "flwr_datasets", "pandas", "matplotlib", "scipy", "transformers", "tokenizers", "sklearn"]
    code = f"import sys, client_app.app; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_node_decodes_only_its_partition_and_gets_the_same_rows():
    images._TENSORS.clear(), images._ROWS.clear()
    alone = load_partition("digits", None, "dirichlet", 4, 2)
    assert not any(k[2] == "train" and k[3] is None for k in images._TENSORS)  # the whole split was not decoded
    images._split_tensors("digits", None, "train")
    indexed = load_partition("digits", None, "dirichlet", 4, 2)
    assert torch.equal(alone.x, indexed.x) and torch.equal(alone.y, indexed.y)


def test_the_partition_cache_loads_once_and_reloads_what_it_cannot_read(tmp_path):
    calls = []

    def load() -> TensorData:
        calls.append(1)
        return TensorData(torch.arange(12.0).view(3, 4), torch.tensor([0, 1, 2]))

    first = client.cached_tensors(tmp_path, ("digits", 3), load)
    again = client.cached_tensors(tmp_path, ("digits", 3), load)
    assert len(calls) == 1 and torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    client.cached_tensors(tmp_path, ("digits", 4), load)  # another key: loaded
    assert len(calls) == 2
    for f in tmp_path.iterdir():
        f.write_bytes(b"not safetensors")
    assert torch.equal(client.cached_tensors(tmp_path, ("digits", 3), load).x, first.x) and len(calls) == 3


def test_the_partition_cache_goes_stale_when_the_data_changes(tmp_path):
    (tmp_path / "train.txt").write_text("a b c")
    before = client.data_identity(str(tmp_path))
    (tmp_path / ".tokenizers").mkdir()  # a cache written into the folder is not the data
    assert client.data_identity(str(tmp_path)) == before
    (tmp_path / "train.txt").write_text("a b c d")
    assert client.data_identity(str(tmp_path)) != before


def test_a_node_walks_its_data_folder_once(tmp_path, monkeypatch):
    (tmp_path / "train.txt").write_text("a b c")
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    first = client.node_data_identity(context, str(tmp_path))
    monkeypatch.setattr(client, "data_identity", lambda path: pytest.fail("walked again"))
    assert client.node_data_identity(context, str(tmp_path)) == first == json.loads(json.dumps(first))


def test_rotary_buffers_come_from_a_build_that_holds_no_weights():
    family = get_family("llama", num_classes=300, width=64, layers=2)
    submodel._nonpersistent_buffers.cache_clear()
    buffers = submodel._nonpersistent_buffers(family.build)
    real = family.build()
    persistent = set(real.state_dict())
    expected = {k: v for k, v in real.named_buffers() if k not in persistent}
    assert buffers.keys() == expected.keys() and buffers
    assert all(torch.equal(buffers[k], expected[k]) for k in expected)
    assert all(p.device.type == "cpu" for p in torch.nn.Linear(2, 2).parameters())  # the patch is gone


def test_a_depth_planner_has_nodes_measure_windows_of_blocks():
    """The server's query says how a capacity is spent (its planner's depth-share): under
    msfusion-depth a node at r = 1/4 measures the sub-model it will train, a quarter of the layers
    at full width, not every layer at a quarter of its width."""
    from pathlib import Path

    from msfusion_core.local.measure import num_bytes
    from msfusion_core.method.split_map import model_state

    assert protocol.read_capacity_query(protocol.capacity_query(1.0)) == 1.0
    assert protocol.read_capacity_query(RecordDict()) == 0.0
    with pytest.raises(ValueError, match="depth-share must be in"):
        protocol.read_capacity_query(protocol.capacity_query(2.0))
    data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext2"
    lm = {"model": "llama", "model-width": 64, "model-layers": 4, "dataset": "wikitext2", "data-path": str(data), "partitioner": "iid",
          "seq-len": 16, "batch-size": 4, "optimizer": "adamw"}
    run_config, node = Settings.from_mapping(lm).to_mapping(), {"partition-id": 0, "num-partitions": 8}
    depth = footprint.measure_in_this_process("client_app.app:setup_from_run_config", run_config, node, 0.25, 1, depth_share=1.0)
    one_layer = get_family("llama", num_classes=Settings.from_mapping(lm).family().build().config.vocab_size, width=64, layers=1)
    assert depth.bytes_down == num_bytes(model_state(one_layer.build()))
    width = footprint.measure_in_this_process("client_app.app:setup_from_run_config", run_config, node, 0.25, 1)
    assert width.bytes_down != depth.bytes_down
    key = footprint.footprint_key(footprint.node_setup("client_app.app:setup_from_run_config", run_config, node), node, 0.25, 6, 1.0)
    assert key != footprint.footprint_key(footprint.node_setup("client_app.app:setup_from_run_config", run_config, node), node, 0.25, 6)
