"""The MSfusion strategy for Flower's message API.

Every sampled node gets its own Message: its sub-model's ArrayRecord and its plan. Replies are
checked against the plan they answer before anything touches the global model; the arithmetic is
msfusion_core's (`SubmodelServer`). Use it in any ServerApp with any model that has a split map::

    strategy = MSfusion(build=MyNet, split_map=my_split_map(MyNet()))
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(MyNet().state_dict()), num_rounds=20)
    MyNet().load_state_dict(result.arrays.to_torch_state_dict())  # the model evaluate_fn scored last

Capacities: each node is asked once (a QUERY message, again for nodes that join later) for its
``partition-id`` and ``split-ratio``; planning uses the partition id as the participant's id, so
plans do not depend on Flower's per-run node ids.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from msfusion_app import protocol
from msfusion_core.method.contrastive import check_mu
from msfusion_core.method.planner import Planner, RoundPlan, Window, check_capacity, make_planner
from msfusion_core.method.server import Reply, ReplyError, SubmodelServer
from msfusion_core.method.split_map import SplitMap, model_state


@dataclass(frozen=True)
class NodeInfo:
    partition_id: int
    capacity: float


@dataclass
class RoundLog:
    """What one round did, kept for the run's metrics and for callers."""

    plan: RoundPlan | None = None
    sent: dict[int, int] = field(default_factory=dict)  # participant id → Flower node id
    messages: list[Message] = field(default_factory=list)  # what was sent (ids set by the Grid)
    bytes_down: dict[int, int] = field(default_factory=dict)  # tensor payload (measure.num_bytes), as bytes up
    bytes_down_serialized: dict[int, int] = field(default_factory=dict)  # Flower's serialised ArrayRecord size
    seconds: dict[str, float] = field(default_factory=dict)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (Flower node id, reason)
    failed: list[tuple[int, str]] = field(default_factory=list)  # error replies, and nodes that sent none
    metrics: dict[str, Any] = field(default_factory=dict)


class NoValidReplies(RuntimeError):
    """``max_failed_rounds`` consecutive rounds without one valid reply: the run cannot go on."""


class MSfusion(Strategy):
    """Sub-model federated training with double shifting, adaptive overlap, overlap-weighted
    aggregation and the contrastive loss.

    One global model: the arrays this strategy hands Flower each round, and so the ones
    ``evaluate_fn`` scores and ``Result.arrays`` holds, are the evaluated model (``global_model()``:
    θ with each unit's readers scaled by its share of the sub-models, then ``prepare_model``). θ
    itself, which training continues from, lives in ``checkpoint_tensors`` for a resumed run.
    ``start`` logs one progress line per round (what ``evaluate_fn`` returned, then overlap, bytes
    and failures) in place of Flower's metric dictionaries. Each round reports its headline figures
    (``HEADLINE_METRICS``) to Flower's ``Result``; ``rounds[t].metrics`` holds the whole row.

    Parameters
    ----------
    build : callable returning the full-width ``nn.Module`` (re-run on the meta device for sub-models).
    split_map : the model's split map (``msfusion_core.method.split_map``).
    planner : a planner name (a key of ``msfusion_core.method.planner.PLANNERS``: msfusion,
        msfusion-depth, msfusion-combined, the baselines, shallow) or a ``Planner``.
    fraction_train : fraction of known nodes sampled per round (at least ``min_train_nodes``).
    fraction_evaluate : fraction of nodes asked to evaluate their sub-model on local data (0: none).
    min_reply_fraction : a round in which fewer than this share of the sampled nodes (and fewer
        than one) replied validly leaves the global model unchanged: a few survivors' non-IID
        updates, round after round, can undo a run.
    default_capacity : the capacity of a node that does not declare ``split-ratio``.
    small_capacity : for a planner given by name: the width of ``small``'s global model, and the
        width msfusion's ``core`` overlap form starts from (the smallest capacity tier).
    seed : seeds initialisation, node sampling and random planners; sent to nodes as ``run-seed``.
    local_keys : frozen tensors every node builds itself (pretrained embeddings): never sent.
    contrastive_mu : the contrastive weight μ every node trains with, sent with each plan; None: the
        planner's own (msfusion 1.0, its local loss; the baselines 0, as published). 0 saves its
        extra forward passes.
    validation_fn : ``(server_round, model) -> loss or None``, the evaluated model's loss on data the
        server holds out. A validation-driven overlap schedule (``grow``) needs it and is told each
        loss; ``start`` refuses to run such a planner without it.
    prepare_model : ``(server_round, model)``, called on the evaluated model before it is validated
        and handed out, e.g. to calibrate BatchNorm statistics on data the server may see; it may
        skip rounds nobody evaluates (the app calibrates only where it tests). ``server_round`` is
        None outside a round (``global_model()`` called by a user).
    max_failed_rounds : fail the run after this many consecutive rounds without one valid reply,
        naming what the nodes said (a ClientApp that fails every time must not end "completed").
    lr_factor : the server's learning-rate schedule: run round → multiplier of every node's lr, sent
        with each plan as ``lr-factor`` (None: nodes keep their own lr).
    """

    def __init__(
        self,
        build: Callable[[], nn.Module],
        split_map: SplitMap,
        planner: str | Planner = "msfusion",
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 0.0,
        min_train_nodes: int = 1,
        min_reply_fraction: float = 0.5,
        default_capacity: float = 1.0,
        small_capacity: float = 0.5,
        seed: int = 0,
        query_timeout: float = 120.0,
        local_keys: Collection[str] = (),
        post_build: Callable[[nn.Module], None] | None = None,
        contrastive_mu: float | None = None,
        max_failed_rounds: int = 3,
        lr_factor: Callable[[int], float] | None = None,
        validation_fn: Callable[[int, nn.Module], float | None] | None = None,
        prepare_model: Callable[[int | None, nn.Module], None] | None = None,
    ) -> None:
        self.planner = make_planner(planner, seed=seed, small_capacity=small_capacity) if isinstance(planner, str) else planner
        self.core = SubmodelServer(
            build,
            split_map,
            self.planner,
            seed=seed,
            local_keys=local_keys,
            post_build=post_build,
        )
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_train_nodes = min_train_nodes
        if not 0.0 <= min_reply_fraction <= 1.0:
            raise ValueError(f"min_reply_fraction must be in [0, 1], got {min_reply_fraction}")
        self.min_reply_fraction = min_reply_fraction
        self.default_capacity = check_capacity(default_capacity, "default_capacity")
        self.seed = seed
        self.query_timeout = query_timeout
        if max_failed_rounds < 1:
            raise ValueError(f"max_failed_rounds must be at least 1, got {max_failed_rounds}")
        self.max_failed_rounds = max_failed_rounds
        self.failed_rounds = 0  # consecutive rounds, up to now, without a valid reply
        mu = check_mu(getattr(self.planner, "contrastive_mu", 0.0) if contrastive_mu is None else contrastive_mu, "contrastive_mu")
        # Per-round training settings decided here, for every node, and sent with each plan.
        self.train_settings: dict[str, Any] = {"contrastive-mu": float(mu), "run-seed": int(seed)}
        self.lr_factor = lr_factor
        self.validation_fn = validation_fn
        self.prepare_model = prepare_model
        self.last_arrays: ArrayRecord | None = None  # the evaluated model this strategy last handed Flower
        self.nodes: dict[int, NodeInfo] = {}  # Flower node id → what it declared
        self.rounds: dict[int, RoundLog] = {}  # by run round (Flower's round + round_offset)
        self.round_offset = 0  # rounds completed before this start() (a resumed run)
        self.full_model_bytes = self.core.full_model_bytes  # the full-width model's, under `small` too

    # -- Strategy API ----------------------------------------------------------------------
    def summary(self) -> None:
        log(
            INFO,
            "MSfusion: planner=%s, groups=%d, fraction_train=%.2f, min_reply_fraction=%.2f",
            self.planner.name,
            len(self.core.group_sizes),
            self.fraction_train,
            self.min_reply_fraction,
        )

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, *args: Any, **kwargs: Any):
        """As ``Strategy.start``; ``initial_arrays`` (e.g. a pretrained model) replace θ if given."""
        if self.planner.needs_validation and self.validation_fn is None:
            raise ValueError(
                f"planner {self.planner.name!r} has a validation-driven overlap schedule (grow): pass "
                "MSfusion(..., validation_fn=fn), where fn(server_round, model) returns the model's loss on "
                "data the server holds out (None to skip a round); without it the overlap never moves"
            )
        if initial_arrays is not None and len(initial_arrays):
            self.load_global(initial_arrays.to_torch_state_dict())
        num_rounds = int(kwargs.get("num_rounds", args[0] if args else 3))
        last_round = self.round_offset + num_rounds
        self.planner.set_run_length(last_round, last_rounds_at_each_lr(self.lr_factor, last_round))
        self.last_arrays = ArrayRecord(model_state(self.global_model(self.round_offset)))
        if len(args) > 4:  # evaluate_fn given by position, after num_rounds ... evaluate_config
            args, kwargs = args[:4], kwargs | {"evaluate_fn": args[4]}
        kwargs["evaluate_fn"] = self.reporting(kwargs.get("evaluate_fn"))
        with quiet_strategy_log():
            return super().start(grid, self.last_arrays, *args, **kwargs)

    def reporting(self, evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None):
        """``evaluate_fn`` (if any), followed by one progress line per round: what it returned,
        then the round's overlap, bytes and failures. Flower's own per-round dictionaries are quieted."""
        last = time.perf_counter()

        def evaluate_and_report(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            nonlocal last
            result = evaluate_fn(server_round, arrays) if evaluate_fn is not None else None
            record = self.rounds.get(server_round + self.round_offset)
            if server_round > 0 or result is not None:
                figures = record.metrics if record is not None and server_round > 0 else {}
                log(INFO, "%s", progress_line(server_round + self.round_offset, dict(result or {}), figures, time.perf_counter() - last))
            last = time.perf_counter()
            return result

        return evaluate_and_report

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self.adopt(arrays)
        record = RoundLog()
        self.rounds[server_round] = record
        record.failed += self.discover(grid)
        started = time.perf_counter()
        participants = self.sample(server_round)
        if not participants:
            log(WARNING, "round %d: no node with a known capacity; nothing to train", server_round)
            return []
        plan = self.core.plan_round(server_round, [(self.nodes[n].partition_id, self.nodes[n].capacity) for n in participants])
        record.plan = plan
        round_settings = self.train_settings | ({"lr-factor": float(self.lr_factor(server_round))} if self.lr_factor else {})
        messages = []
        for node_id in participants:
            pid = self.nodes[node_id].partition_id
            download = self.core.download(plan.participants[pid])
            arrays_out = ArrayRecord(download)
            content = protocol.plan_message(arrays_out, plan.participants[pid], server_round, dict(config) | round_settings)
            record.sent[pid] = node_id
            record.bytes_down[pid] = protocol.payload_bytes(download)
            record.bytes_down_serialized[pid] = arrays_out.count_bytes()
            messages.append(Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN))
        record.messages = messages
        record.seconds["plan_and_slice"] = time.perf_counter() - started
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        started = time.perf_counter()
        record = self.rounds.setdefault(server_round, RoundLog())
        accepted = self.check_replies(server_round, replies)
        record.messages = []  # they hold every sub-model sent: keep no reference past the round
        needed = 1 if record.plan is None else max(1, math.ceil(self.min_reply_fraction * len(record.plan.participants) - 1e-9))
        applied = record.plan is not None and len(accepted) >= needed
        if applied:
            result = self.core.aggregate(record.plan, accepted)
            record.metrics |= {
                "model-shift": result.model_shift,
                "model-shift-floor": result.shift_floor,
                "relative-shift": result.relative_shift,
                "shared-fraction": result.shared_fraction,
                "covered-fraction": result.covered_fraction,
                "coordinate-coverage-histogram": [result.coverage_histogram.get(c, 0) for c in range(max(result.coverage_histogram) + 1)],
            }
        elif record.plan is not None:
            log(
                WARNING,
                "round %d: %d valid replies of %d sampled < %d (min_reply_fraction=%.2f); global model unchanged",
                server_round, len(accepted), len(record.plan.participants), needed, self.min_reply_fraction,
            )
        record.seconds["aggregate"] = time.perf_counter() - started
        # Cumulative over the run so far (applied rounds only): the share of weight coordinates still
        # at their initial values, and how unevenly the others have been trained.
        never, cv = self.core.train_counts.summary()  # one pass over the counts, every round
        record.metrics |= {"never-trained-fraction": never, "train-count-cv": cv}
        record.metrics |= self.round_metrics(record, accepted, applied)
        self.check_progress(server_round, record, accepted)
        if not applied:  # Flower keeps the arrays it has, which are still the evaluated model
            return None, MetricRecord(_headline(record.metrics))
        model = self.global_model(server_round)
        if self.validation_fn is not None and self.validate(server_round, record, model):
            model = self.global_model(server_round)
        self.last_arrays = ArrayRecord(model_state(model))
        return self.last_arrays, MetricRecord(_headline(record.metrics))

    def validate(self, server_round: int, record: RoundLog, model: nn.Module) -> bool:
        """Score the evaluated model with ``validation_fn`` and tell the planner. Returns whether θ
        changed (a growth step undone returns θ to its copy): the model to hand out is then rebuilt,
        so that what is evaluated and returned is the model the round ends with."""
        loss = self.validation_fn(server_round, model)
        if loss is None:
            return False
        record.metrics["validation-loss"] = float(loss)
        undone = self.core.observe_validation(server_round, float(loss))
        record.metrics["growth-undone"] = int(undone)
        return undone

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Federated evaluation: sampled nodes evaluate the sub-model they can hold (their window of
        the latest plan, rebuilt at the current θ) on their local held-out data."""
        server_round += self.round_offset
        record = self.rounds.get(server_round)
        if self.fraction_evaluate == 0.0 or record is None or record.plan is None:
            return []
        pids = sorted(record.sent)
        k = max(1, round(self.fraction_evaluate * len(pids)))
        chosen = random.Random(f"{self.seed}-eval-{server_round}").sample(pids, k)
        messages = []
        for pid in chosen:
            pp = record.plan.participants[pid]
            content = protocol.plan_message(ArrayRecord(self.core.download(pp)), pp, server_round, dict(config))
            messages.append(Message(content, dst_node_id=record.sent[pid], message_type=MessageType.EVALUATE))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        totals, n = {"loss": 0.0, "accuracy": 0.0}, 0
        for msg in replies:
            read = None if msg.has_error() else protocol.read_evaluate_reply(msg.content)
            if read is None or read[2] <= 0:
                continue
            loss, accuracy, k = read
            n += k
            totals["loss"] += k * loss
            totals["accuracy"] += k * accuracy
        if n == 0:
            return None
        return MetricRecord({f"federated-{k}": v / n for k, v in totals.items()} | {"federated-examples": n})

    def adopt(self, arrays: ArrayRecord | None) -> None:
        """Train from the arrays Flower hands over: a wrapper (server-side DP, say) may have changed
        what this strategy returned. Their change to the evaluated model is applied to θ. Unchanged
        arrays, the usual case, cost one identity check."""
        if arrays is None or arrays is self.last_arrays or not len(arrays):
            return
        given = arrays.to_torch_state_dict()
        handed = self.last_arrays.to_torch_state_dict() if self.last_arrays is not None else self.core.state
        if given.keys() == handed.keys() and all(torch.equal(given[k], t) for k, t in handed.items()):
            return
        if given.keys() != handed.keys() or any(given[k].shape != t.shape for k, t in handed.items()):
            self.load_global(given)  # not a change of what was handed out: a model to train from
        else:
            self.load_global({k: t + (given[k] - handed[k]).to(t.dtype) if k in handed else t for k, t in self.core.state.items()})
        log(INFO, "the arrays for this round differ from the evaluated model handed out (changed by a wrapper?): training from them")

    def check_progress(self, server_round: int, record: RoundLog, accepted: list[Reply]) -> None:
        """Fail the run after ``max_failed_rounds`` consecutive rounds without a valid reply (a round
        with no node to train counts too: its nodes failed the capacity query, or none is connected)."""
        if accepted:
            self.failed_rounds = 0
            return
        self.failed_rounds += 1
        if self.failed_rounds >= self.max_failed_rounds:
            said = sorted({why for _, why in record.failed + record.rejected}) or ["nothing (no replies)"]
            raise NoValidReplies(f"no valid reply for {self.failed_rounds} round{'s' if self.failed_rounds > 1 else ''} (up to round {server_round}); nodes said: {'; '.join(said)}")

    # -- nodes -----------------------------------------------------------------------------
    def discover(self, grid: Grid) -> list[tuple[int, str]]:
        """Forget nodes that are no longer connected (so a dead node is not sampled again and a
        restarted one can reclaim its partition); ask new ones for their partition id and capacity.
        Returns the (node, reason) of every node whose answer was an error or unusable."""
        online = set(grid.get_node_ids())
        for gone in [n for n in self.nodes if n not in online]:
            log(WARNING, "node %d (partition %d) is no longer connected", gone, self.nodes.pop(gone).partition_id)
        unknown = sorted(n for n in online if n not in self.nodes)
        failures: list[tuple[int, str]] = []
        if not unknown:
            return failures
        queries = [Message(protocol.capacity_query(self.planner.depth_share), dst_node_id=n, message_type=MessageType.QUERY) for n in unknown]
        taken = {info.partition_id for info in self.nodes.values()}
        for reply in grid.send_and_receive(queries, timeout=self.query_timeout):
            src = reply.metadata.src_node_id
            if reply.has_error():
                reason = _last_line(str(reply.error.reason))
                failures.append((src, reason))
                log(WARNING, "node %d did not answer the capacity query: %s", src, reason)
                continue
            try:
                info = NodeInfo(*protocol.read_capacity_reply(reply.content, self.default_capacity, f"node {src}"))
            except ValueError as exc:
                failures.append((src, f"unusable capacity reply: {exc}"))
                log(WARNING, "node %d sent an unusable capacity reply: %s", src, exc)
                continue
            if info.partition_id in taken:
                log(WARNING, "node %d claims partition %d, already taken; ignored", src, info.partition_id)
                continue
            taken.add(info.partition_id)
            self.nodes[src] = info
            log(INFO, "node %d: partition %d, capacity %.3f", src, info.partition_id, info.capacity)
        return failures

    def sample(self, server_round: int) -> list[int]:
        """Seeded sample of known nodes (Flower node ids), sorted by partition id."""
        known = sorted(self.nodes, key=lambda n: self.nodes[n].partition_id)
        k = min(len(known), max(self.min_train_nodes, round(self.fraction_train * len(known))))
        chosen = random.Random(f"{self.seed}-train-{server_round}").sample(known, k)
        return sorted(chosen, key=lambda n: self.nodes[n].partition_id)

    # -- replies ---------------------------------------------------------------------------
    def check_replies(self, server_round: int, replies: Iterable[Message]) -> list[Reply]:
        """Valid replies (one per participant, matching its plan, with usable metrics); every other
        reply is logged and counted."""
        record = self.rounds[server_round]
        by_node = {node: pid for pid, node in record.sent.items()}
        # Error replies made by the SuperLink (node unavailable, timeout) come from the SuperLink's
        # own id: name the node by the message they answer.
        addressee = {m.metadata.message_id: m.metadata.dst_node_id for m in record.messages if m.metadata.message_id}
        accepted: list[Reply] = []
        seen: set[int] = set()
        for msg in replies:
            src = msg.metadata.src_node_id
            if msg.has_error():
                src = addressee.get(msg.metadata.reply_to_message_id, src)
                reason = _last_line(str(msg.error.reason))
                record.failed.append((src, reason))
                log(WARNING, "round %d: node %d failed: %s", server_round, src, reason)
                continue
            try:
                pid = by_node.get(src)
                if pid is None or record.plan is None:
                    raise ReplyError("reply from a node that was not sent a plan this round")
                if src in seen:
                    raise ReplyError("duplicate reply")
                reply = protocol.read_train_reply(pid, msg.content)
                self.core.validate(record.plan.participants[pid], reply)
            except ReplyError as exc:
                record.rejected.append((src, str(exc)))
                log(WARNING, "round %d: rejected reply from node %d: %s", server_round, src, exc)
                continue
            seen.add(src)
            accepted.append(reply)
        answered = seen | {node for node, _ in record.failed + record.rejected}
        for node in sorted(set(record.sent.values()) - answered):  # a ClientApp killed mid-round, a node that hangs
            record.failed.append((node, "no reply before the round timed out"))
            log(WARNING, "round %d: node %d failed: no reply before the round timed out", server_round, node)
        return accepted

    def round_metrics(self, record: RoundLog, accepted: list[Reply], applied: bool) -> dict[str, Any]:
        """The round's row. Every value read here was checked by ``core.validate``."""

        def mean(key: str) -> float:
            values = [float(r.metrics[key]) for r in accepted if key in r.metrics]
            return float(np.mean(values)) if values else float("nan")

        plan = record.plan
        n = sum(r.num_examples for r in accepted)
        hist = plan.coverage_histogram(self.core.group_sizes) if plan else {}
        return {
            "participants": len(record.sent),
            "accepted": len(accepted),
            "rejected": len(record.rejected),
            "failed": len(record.failed),
            "applied": int(applied),
            "num-examples": n,
            "train-loss": sum(float(r.metrics["loss"]) * r.num_examples for r in accepted) / n if n else float("nan"),
            "overlap": plan.overlap if plan else float("nan"),
            # Where the lowest-id participant's window of the first group starts: it moves every
            # round under double shifting, and stays put under a fixed prefix (HeteroFL, o = 1).
            "first-window-start": first_window_start(plan) if plan else float("nan"),
            "spread": plan.spread if plan else float("nan"),
            "flops-per-participant": mean("flops"),
            "flops-per-participant-max": max((float(r.metrics["flops"]) for r in accepted), default=float("nan")),
            # Bytes both ways by one definition, the tensors' payload (measure.num_bytes); the
            # serialised size of what was sent is its own column.
            "bytes-down-per-participant": float(np.mean(list(record.bytes_down.values()))) if record.bytes_down else float("nan"),
            "bytes-up-per-participant": float(np.mean([protocol.payload_bytes(r.state) for r in accepted])) if accepted else float("nan"),
            "bytes-down-serialized-per-participant": float(np.mean(list(record.bytes_down_serialized.values()))) if record.bytes_down_serialized else float("nan"),
            "full-model-bytes": self.full_model_bytes,
            "train-seconds-per-participant": mean("train-seconds"),
            "build-seconds-per-participant": mean("build-seconds"),
            "server-plan-slice-seconds": record.seconds.get("plan_and_slice", float("nan")),
            "server-aggregate-seconds": record.seconds.get("aggregate", float("nan")),
            "coverage-histogram": [hist.get(c, 0) for c in range(max(hist, default=0) + 1)],
        }

    # -- checkpoint state --------------------------------------------------------------------
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The evaluated model under its own keys (what a user loads), and the method's state a
        resumed run restores (``SubmodelServer.state_tensors``: θ under ``resume/theta/``, ...)."""
        model = self.last_arrays.to_torch_state_dict() if self.last_arrays is not None else self.global_arrays().to_torch_state_dict()
        return model | self.core.state_tensors()

    def state_dict(self) -> dict[str, Any]:
        """Everything besides θ that the next rounds depend on (node sampling and the client seeds
        are functions of (seed, round), so they need no saved RNG state)."""
        return {
            "planner": self.planner.state_dict(),
            "capacities": {str(info.partition_id): info.capacity for info in self.nodes.values()},
        }

    def restore(self, completed_round: int, state: Mapping[str, torch.Tensor], extra: Mapping[str, Any]) -> None:
        """Continue after ``completed_round``: θ, the planner's state, and Flower's round numbering."""
        self.core.load_state_tensors(state)
        self.planner.load_state_dict(extra["planner"])
        self.round_offset = completed_round

    # -- global model ----------------------------------------------------------------------
    def global_arrays(self) -> ArrayRecord:
        """The evaluated model's arrays (what Flower holds, evaluates and returns as ``Result.arrays``)."""
        return ArrayRecord(model_state(self.global_model()))

    def global_model(self, server_round: int | None = None) -> nn.Module:
        """The evaluated model: θ scaled by the planner's inclusion rule, then ``prepare_model``
        (told ``server_round``, the run round the model ends, or None outside a round)."""
        model = self.core.global_model()
        if self.prepare_model is not None:
            self.prepare_model(server_round, model)
        return model

    def load_global(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace θ (same keys and shapes required, or under ``small`` the full-width model's)."""
        self.core.load_state(state)


def last_rounds_at_each_lr(lr_factor: Callable[[int], float] | None, last_round: int) -> tuple[int, ...]:
    """The last round at each lr of ``lr_factor`` before ``last_round``: a growth trial must not span one."""
    if lr_factor is None:
        return ()
    return tuple(t for t in range(1, last_round) if lr_factor(t) != lr_factor(t + 1))


def first_window_start(plan: RoundPlan) -> float:
    """Where the first participant's first split window starts (a group it holds whole, every
    block under width windows or every unit under depth windows, says nothing of the shift)."""
    first = plan.participants[min(plan.participants)]
    windows = [w for w in first.groups.values() if isinstance(w, Window)]
    split = [w for w in windows if w.length < w.size] or windows
    return float(split[0].start) if split else float("nan")


# What a round reports to Flower's Result.train_metrics_clientapp: the headline.
# The whole row, about thirty figures, is ``strategy.rounds[t].metrics``.
HEADLINE_METRICS = ("participants", "accepted", "rejected", "failed", "applied", "train-loss", "overlap", "bytes-down-per-participant")


def _headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in HEADLINE_METRICS if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool)}


# The progress line: what evaluate_fn returned (accuracy, loss, ...), then these round figures.
PROGRESS_FIELDS = (
    ("overlap", "overlap", "{:.3f}"),
    ("window", "first-window-start", "{:.0f}"),
    ("shift", "model-shift", "{:.3f}"),
    ("bytes/participant down", "bytes-down-per-participant", "{:.3g}"),
    ("up", "bytes-up-per-participant", "{:.3g}"),
    ("rejected", "rejected", "{}"),
    ("failed", "failed", "{}"),
)


def progress_line(server_round: int, evaluated: Mapping[str, Any], figures: Mapping[str, Any], seconds: float) -> str:
    """One line per round: what ``evaluate_fn`` returned (``evaluated``), then the round's
    ``PROGRESS_FIELDS`` from its metrics (``figures``). A figure the round does not have (a dense
    planner's overlap, no evaluation) is left out rather than printed as nan; ``seconds`` is the
    whole round's."""
    shown = [f"{k}={v:.4f}" for k, v in evaluated.items() if _finite(v)]
    shown += [f"{name}={spec.format(figures[key])}" for name, key, spec in PROGRESS_FIELDS if _finite(figures.get(key))]
    return f"[round {server_round}] " + " ".join(shown) + f" ({seconds:.1f}s)"


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _DropStrategyChatter(logging.Filter):
    """Flower's Strategy.start logs every round's metric dictionaries and a long closing summary at
    INFO; the progress line says what matters. Warnings and errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > INFO or "serverapp/strategy" not in record.pathname.replace("\\", "/")


@contextlib.contextmanager
def quiet_strategy_log():
    logger, chatter = logging.getLogger("flwr"), _DropStrategyChatter()
    logger.addFilter(chatter)
    try:
        yield
    finally:
        logger.removeFilter(chatter)


# Flower wraps an exception a ClientApp raised as "<class 'pkg.Error'>:<'message'>".
_FLOWER_WRAPPED = re.compile(r"<class '(?:[\w.]*\.)?(\w+)'>:<'(.*)'>\s*$", re.DOTALL)


def _last_line(text: str) -> str:
    """The informative end of an error reason (a remote traceback's last line), unwrapped."""
    wrapped = _FLOWER_WRAPPED.search(text.strip())
    if wrapped:
        text = f"{wrapped.group(1)}: {wrapped.group(2)}"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "unknown error"
