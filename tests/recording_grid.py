"""A LocalGrid that keeps the latest message of each type sent to each node, for tests to inspect."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message

from msfusion.local_grid import LocalGrid


class RecordingGrid(LocalGrid):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.last_sent: dict[tuple[int, str], Message] = {}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        for msg in messages:
            self.last_sent[msg.metadata.dst_node_id, msg.metadata.message_type] = msg
        return super().send_and_receive(messages, timeout=timeout)
