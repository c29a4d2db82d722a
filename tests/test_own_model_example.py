"""docs/examples/own_model.py: the strategy and ClientApp factory with a model the project does not ship."""

import importlib.util
from pathlib import Path

from server_app.local_grid import LocalGrid

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "own_model.py"


def load_example():
    spec = importlib.util.spec_from_file_location("own_model", EXAMPLE)
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
    sent = [m for m in grid.sent if m.metadata.dst_node_id == 9 and "arrays" in m.content.array_records]
    proj = sent[0].content.array_records["arrays"]["proj.weight"]
    assert tuple(proj.shape) == (16, 4 * 16)
