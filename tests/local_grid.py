"""An in-process Flower Grid for strategy tests without Ray: messages go straight to the real
ClientApp handlers, each node with its own Context (node config and persistent state)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

import client_app.app as client


class LocalGrid(Grid):
    def __init__(self, node_configs: Mapping[int, dict], run_config: Mapping | None = None, app: ClientApp = client.app) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0  # lets Message() build metadata
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config=dict(cfg), state=RecordDict(), run_config=dict(run_config or {}))
            for n, cfg in node_configs.items()
        }
        self.apps: dict[int, Callable[[Message, Context], Message]] = {n: app for n in node_configs}
        self.sent: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            self.sent.append(msg)
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
