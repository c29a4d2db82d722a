"""The nodes a strategy knows: who is connected, each one's partition id and capacity, and which
of them a round samples. Planning uses the partition id as the participant's id, so plans do not
depend on Flower's per-run node ids."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from logging import INFO, WARNING

from flwr.app import Message, MessageType
from flwr.common.logger import log
from flwr.serverapp import Grid

from msfusion_app import protocol


@dataclass(frozen=True)
class NodeInfo:
    partition_id: int
    capacity: float


class NodeRegistry:
    """Flower node id → what it declared in answer to the capacity query."""

    def __init__(self, default_capacity: float, depth_share: float, query_timeout: float, seed: int) -> None:
        self.default_capacity, self.depth_share = default_capacity, depth_share
        self.query_timeout, self.seed = query_timeout, seed
        self.nodes: dict[int, NodeInfo] = {}

    def discover(self, grid: Grid) -> list[tuple[int, str]]:
        """Forget nodes no longer connected (a restarted one can reclaim its partition); ask new ones
        for their partition id and capacity. Returns (node, reason) for every unusable answer."""
        online = set(grid.get_node_ids())
        for gone in [n for n in self.nodes if n not in online]:
            log(WARNING, "node %d (partition %d) is no longer connected", gone, self.nodes.pop(gone).partition_id)
        unknown = sorted(n for n in online if n not in self.nodes)
        if not unknown:
            return []
        query = protocol.capacity_query(self.depth_share)
        replies = grid.send_and_receive([Message(query, dst_node_id=n, message_type=MessageType.QUERY) for n in unknown], timeout=self.query_timeout)
        failures = []
        for reply in replies:
            why = self._register(reply)
            if why is not None:
                failures.append((reply.metadata.src_node_id, why))
                log(WARNING, "node %d: %s", reply.metadata.src_node_id, why)
        return failures

    def _register(self, reply: Message) -> str | None:
        """Record one capacity answer; returns why it is unusable, or None."""
        src = reply.metadata.src_node_id
        if reply.has_error():
            reason = last_line(str(reply.error.reason))
            log(WARNING, "node %d did not answer the capacity query", src)
            return reason
        try:
            info = NodeInfo(*protocol.read_capacity_reply(reply.content, self.default_capacity, f"node {src}"))
        except ValueError as exc:
            return f"unusable capacity reply: {exc}"
        if any(known.partition_id == info.partition_id for known in self.nodes.values()):
            log(WARNING, "node %d claims partition %d, already taken; ignored", src, info.partition_id)
            return None
        self.nodes[src] = info
        log(INFO, "node %d: partition %d, capacity %.3f", src, info.partition_id, info.capacity)
        return None

    def sample(self, server_round: int, fraction: float, minimum: int) -> list[int]:
        """A seeded sample of known nodes (Flower node ids), sorted by partition id."""
        known = sorted(self.nodes, key=lambda n: self.nodes[n].partition_id)
        k = min(len(known), max(minimum, round(fraction * len(known))))
        chosen = random.Random(f"{self.seed}-train-{server_round}").sample(known, k)
        return sorted(chosen, key=lambda n: self.nodes[n].partition_id)


# Flower wraps an exception a ClientApp raised as "<class 'pkg.Error'>:<'message'>".
_FLOWER_WRAPPED = re.compile(r"<class '(?:[\w.]*\.)?(\w+)'>:<'(.*)'>\s*$", re.DOTALL)


def last_line(text: str) -> str:
    """The informative end of an error reason (a remote traceback's last line), unwrapped."""
    wrapped = _FLOWER_WRAPPED.search(text.strip())
    if wrapped:
        text = f"{wrapped.group(1)}: {wrapped.group(2)}"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "unknown error"
