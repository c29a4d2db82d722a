"""A round's replies sorted into valid ones, rejected ones and failures, before anything touches
the global model; and the policy that ends a run whose nodes never reply validly."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import WARNING

from flwr.app import Message
from flwr.common.logger import log

from msfusion_app import protocol
from msfusion_core.method.server import Reply, ReplyError
from server_app.nodes import last_line
from server_app.report import RoundLog


class NoValidReplies(RuntimeError):
    """``max_failed_rounds`` consecutive rounds without one valid reply: the run cannot go on."""


def sort_replies(server_round: int, record: RoundLog, replies: Iterable[Message], validate: Callable[[int, Reply], None]) -> list[Reply]:
    """Valid replies (one per participant, matching its plan: ``validate(pid, reply)`` raises
    ReplyError otherwise); every other reply is logged and counted in ``record``."""
    by_node = {node: pid for pid, node in record.sent.items()}
    # Error replies made by the SuperLink (node unavailable, timeout) come from the SuperLink's own
    # id: name the node by the message they answer.
    addressee = {m.metadata.message_id: m.metadata.dst_node_id for m in record.messages if m.metadata.message_id}
    accepted: list[Reply] = []
    seen: set[int] = set()
    for msg in replies:
        src = msg.metadata.src_node_id
        if msg.has_error():
            record.fail(server_round, addressee.get(msg.metadata.reply_to_message_id, src), last_line(str(msg.error.reason)))
            continue
        try:
            pid = by_node.get(src)
            if pid is None or record.plan is None:
                raise ReplyError("reply from a node that was not sent a plan this round")
            if src in seen:
                raise ReplyError("duplicate reply")
            reply = protocol.read_train_reply(pid, msg.content)
            validate(pid, reply)
        except ReplyError as exc:
            record.rejected.append((src, str(exc)))
            log(WARNING, "round %d: rejected reply from node %d: %s", server_round, src, exc)
            continue
        seen.add(src)
        accepted.append(reply)
    answered = seen | {node for node, _ in record.failed + record.rejected}
    for node in sorted(set(record.sent.values()) - answered):  # a ClientApp killed mid-round, a node that hangs
        record.fail(server_round, node, "no reply before the round timed out")
    return accepted


class FailurePolicy:
    """Fail the run after ``max_failed_rounds`` consecutive rounds without a valid reply (a round
    with no node to train counts too), naming what the nodes said: a ClientApp that fails every
    time must not end "completed"."""

    def __init__(self, max_failed_rounds: int) -> None:
        if max_failed_rounds < 1:
            raise ValueError(f"max_failed_rounds must be at least 1, got {max_failed_rounds}")
        self.max_failed_rounds, self.failed_rounds = max_failed_rounds, 0

    def check(self, server_round: int, record: RoundLog, accepted: list[Reply]) -> None:
        self.failed_rounds = 0 if accepted else self.failed_rounds + 1
        if self.failed_rounds >= self.max_failed_rounds:
            said = sorted({why for _, why in record.failed + record.rejected}) or ["nothing (no replies)"]
            rounds = f"{self.failed_rounds} round{'s' if self.failed_rounds > 1 else ''}"
            raise NoValidReplies(f"no valid reply for {rounds} (up to round {server_round}); nodes said: {'; '.join(said)}")
