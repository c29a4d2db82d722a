"""An in-process Flower Grid: the real Strategy and the real ClientApp handlers in one process.

No Ray and no SuperLink: each message goes straight to the ClientApp, nodes train one after
another (torch uses all of the machine's cores for each), and every node keeps its own ``Context``
(node config and persistent state) across rounds, as under Flower. It is what experiment grids and
the tests use; ``tests/test_engines.py`` checks that it trains the same model as ``flwr run``.

    from msfusion.local_grid import run_local
    run_local({"num-server-rounds": 3, "output-dir": "/tmp/runs", "run-name": "demo"}, num_nodes=10)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.supercore.task_identity import TaskIdentity


class LocalGrid(Grid):
    """``node_configs``: Flower node id → that node's node config (``partition-id``, ...)."""

    def __init__(self, node_configs: Mapping[int, dict], run_config: Mapping | None = None, app: ClientApp | None = None) -> None:
        if app is None:
            import client_app.app as client

            app = client.app
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0  # lets Message() build metadata
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config=dict(cfg), state=RecordDict(), run_config=dict(run_config or {}))
            for n, cfg in node_configs.items()
        }
        self.apps: dict[int, Callable[[Message, Context], Message]] = {n: app for n in node_configs}

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            replies.append(self.apps[node](msg, self.contexts[node]))
        return replies

    # The rest of Grid's interface is not used by Strategy.start.
    def set_run(self, run_id: int) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs) -> Message:  # pragma: no cover
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError


def simulated_node_configs(num_nodes: int) -> dict[int, dict[str, Any]]:
    """What Flower's simulation gives its nodes: a partition id and the partition count."""
    return {pid + 1: {"partition-id": pid, "num-partitions": num_nodes} for pid in range(num_nodes)}


def run_local(run_config: Mapping[str, Any], num_nodes: int, num_threads: int | None = None) -> Result:
    """The project's ServerApp over ``num_nodes`` simulated nodes, in this process.

    ``run_config`` is what ``flwr run --run-config`` would be given: unset keys take the app's
    defaults (``Settings``, which ``[tool.flwr.app.config]`` mirrors). ``num_threads`` sets torch's
    intra-op threads for the run (default: torch's, all cores). A Flower simulation gives each
    ClientApp ``client-resources-num-cpus`` = 1 thread; with 1 here the run is bit-identical to it,
    with more the reduction order of a conv differs and θ agrees to float rounding (~1e-7).
    """
    import torch

    from msfusion_app.settings import Settings
    from server_app.app import run

    settings = Settings.from_mapping(run_config)
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads or before)
    try:
        return run(LocalGrid(simulated_node_configs(num_nodes), settings.to_mapping()), settings)
    finally:
        torch.set_num_threads(before)
