"""The MSfusion strategy for Flower's message API: a thin adapter over ``SubmodelServer``.

Every sampled node gets its own Message: its sub-model's ArrayRecord, its plan and the round's
settings. Replies are checked against the plan they answer before anything touches the global
model; the arithmetic is msfusion_core's. Use it in any ServerApp with any model that has a split map::

    strategy = MSfusion(build=MyNet, split_map=my_split_map(MyNet()))
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(MyNet().state_dict()), num_rounds=20)
    MyNet().load_state_dict(result.arrays.to_torch_state_dict())  # the model evaluate_fn scored last
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection, Iterable
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from torch import nn

from msfusion_app import protocol
from msfusion_core.method.contrastive import CONTRASTIVE_MU, check_mu
from msfusion_core.method.planner import Planner, check_capacity, make_planner
from msfusion_core.method.server import SubmodelServer
from msfusion_core.method.split_map import SplitMap, model_state
from server_app.nodes import NodeInfo, NodeRegistry
from server_app.replies import FailurePolicy, sort_replies
from server_app.report import RoundLog, aggregate_metrics, headline, progress_line, quiet_strategy_log, round_metrics


class MSfusion(Strategy):
    """Sub-model federated training with double shifting, adaptive overlap, overlap-weighted
    aggregation and the contrastive loss.

    The arrays this strategy hands Flower each round, and so the ones ``evaluate_fn`` scores and
    ``Result.arrays`` holds, are the evaluated model (``SubmodelServer.evaluated_state``: θ with each
    unit's readers scaled by its share of the sub-models, then ``prepare_model``). ``start`` logs one
    progress line per round in place of Flower's metric dictionaries; ``rounds[t].metrics`` holds
    the whole row, Flower's ``Result`` the headline.

    Parameters
    ----------
    build : callable returning the full-width ``nn.Module`` (re-run on the meta device for sub-models).
    split_map : the model's split map (``msfusion_core.method.split_map``).
    planner : a key of ``msfusion_core.method.planner.PLANNERS`` or a ``Planner``.
    fraction_train, fraction_evaluate : fractions of known nodes sampled to train (at least
        ``min_train_nodes``) and to evaluate their sub-model on local data (0: none).
    min_reply_fraction : a round in which fewer than this share of the sampled nodes replied validly
        leaves the global model unchanged.
    default_capacity : the capacity of a node that declares no ``split-ratio``.
    small_capacity : for a planner given by name: the width of ``small``'s global model.
    seed : seeds initialisation, node sampling and random planners; sent to nodes as the run seed.
    local_keys, post_build : the model family's (``ModelFamily``): frozen tensors every node builds
        itself, and the sub-model hook.
    contrastive_mu : μ for a planner that trains with the contrastive term (None: 1.0, the method's);
        the baselines train without it, as published.
    max_failed_rounds : fail the run after this many consecutive rounds without a valid reply.
    lr_factor : run round → multiplier of every node's lr (None: nodes keep their own lr).
    prepare_model : ``(server_round, model)``, called on the evaluated model before it is handed out,
        e.g. to calibrate BatchNorm statistics; ``server_round`` is None outside a round.
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
        prepare_model: Callable[[int | None, nn.Module], None] | None = None,
    ) -> None:
        planner = make_planner(planner, seed=seed, small_capacity=small_capacity) if isinstance(planner, str) else planner
        self.core = SubmodelServer(build, split_map, planner, seed=seed, local_keys=local_keys, post_build=post_build)
        if not 0.0 <= min_reply_fraction <= 1.0:
            raise ValueError(f"min_reply_fraction must be in [0, 1], got {min_reply_fraction}")
        self.fraction_train, self.fraction_evaluate, self.min_train_nodes = fraction_train, fraction_evaluate, min_train_nodes
        self.min_reply_fraction, self.seed = min_reply_fraction, seed
        self.registry = NodeRegistry(check_capacity(default_capacity, "default_capacity"), planner.depth_share, query_timeout, seed)
        self.failures = FailurePolicy(max_failed_rounds)
        mu = CONTRASTIVE_MU if contrastive_mu is None else check_mu(contrastive_mu, "contrastive_mu")
        self.contrastive_mu = mu if planner.uses_contrastive else 0.0
        self.lr_factor, self.prepare_model = lr_factor, prepare_model
        self.handed: ArrayRecord | None = None  # the evaluated model this strategy last handed Flower
        self.rounds: dict[int, RoundLog] = {}  # by run round (Flower's round + the rounds a resumed run had done)

    @property
    def planner(self) -> Planner:
        return self.core.planner

    @property
    def nodes(self) -> dict[int, NodeInfo]:
        return self.registry.nodes

    def run_round(self, server_round: int) -> int:
        """Flower counts rounds from 1 at every ``start``; a resumed run continues its own count."""
        return server_round + self.core.resumed_after

    def summary(self) -> None:
        log(INFO, "MSfusion: planner=%s, groups=%d, fraction_train=%.2f, min_reply_fraction=%.2f",
            self.planner.name, len(self.core.group_sizes), self.fraction_train, self.min_reply_fraction)

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int = 3, *args: Any, **kwargs: Any) -> Result:
        """As ``Strategy.start``; ``initial_arrays`` (e.g. a pretrained model) replace θ if given."""
        if initial_arrays is not None and len(initial_arrays):
            self.core.load_state(initial_arrays.to_torch_state_dict())
        self.handed = self.evaluated_arrays(self.core.resumed_after)
        if len(args) > 3:  # evaluate_fn given by position, after timeout, train_config, evaluate_config
            args, kwargs = args[:3], kwargs | {"evaluate_fn": args[3]}
        kwargs["evaluate_fn"] = self.reporting(kwargs.get("evaluate_fn"))
        with quiet_strategy_log():
            return super().start(grid, self.handed, num_rounds, *args, **kwargs)

    def reporting(self, evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None):
        """``evaluate_fn`` (if any), then one progress line per round: what it returned, then the
        round's overlap, bytes and failures."""
        last = time.perf_counter()

        def evaluate_and_report(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            nonlocal last
            result = evaluate_fn(server_round, arrays) if evaluate_fn is not None else None
            record = self.rounds.get(self.run_round(server_round)) if server_round > 0 else None
            if server_round > 0 or result is not None:
                figures = record.metrics if record is not None else {}
                log(INFO, "%s", progress_line(self.run_round(server_round), dict(result or {}), figures, time.perf_counter() - last))
            last = time.perf_counter()
            return result

        return evaluate_and_report

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        server_round = self.run_round(server_round)
        if arrays is not self.handed and len(arrays):
            handed = self.handed.to_torch_state_dict() if self.handed is not None else self.core.evaluated_state()
            self.core.adopt(arrays.to_torch_state_dict(), handed)
        record = self.rounds[server_round] = RoundLog()
        record.failed += self.registry.discover(grid)
        started = time.perf_counter()
        participants = self.registry.sample(server_round, self.fraction_train, self.min_train_nodes)
        if not participants:
            log(WARNING, "round %d: no node with a known capacity; nothing to train", server_round)
            return []
        record.plan = self.core.plan_round(server_round, [(self.nodes[n].partition_id, self.nodes[n].capacity) for n in participants])
        lr_factor = float(self.lr_factor(server_round)) if self.lr_factor else 1.0
        settings = protocol.RoundSettings(self.contrastive_mu, int(self.seed), lr_factor)
        for node_id in participants:
            pid = self.nodes[node_id].partition_id
            download = self.core.download(record.plan.participants[pid])
            arrays_out = ArrayRecord(download)
            content = protocol.plan_message(arrays_out, record.plan.participants[pid], server_round, settings, config)
            record.sent[pid] = node_id
            record.bytes_down[pid], record.bytes_down_serialized[pid] = protocol.payload_bytes(download), arrays_out.count_bytes()
            record.messages.append(Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN))
        record.seconds["plan_and_slice"] = time.perf_counter() - started
        return record.messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round = self.run_round(server_round)
        started = time.perf_counter()
        record = self.rounds.setdefault(server_round, RoundLog())
        accepted = sort_replies(server_round, record, replies, lambda pid, reply: self.core.validate(record.plan.participants[pid], reply))
        record.messages = []  # they hold every sub-model sent: keep no reference past the round
        planned = len(record.plan.participants) if record.plan is not None else 0
        needed = max(1, math.ceil(self.min_reply_fraction * planned - 1e-9))
        applied = record.plan is not None and len(accepted) >= needed
        if applied:
            record.metrics |= aggregate_metrics(self.core.aggregate(record.plan, accepted))
        elif record.plan is not None:
            log(WARNING, "round %d: %d valid replies of %d sampled < %d (min_reply_fraction=%.2f); global model unchanged",
                server_round, len(accepted), planned, needed, self.min_reply_fraction)
        record.seconds["aggregate"] = time.perf_counter() - started
        # Cumulative over the applied rounds: the share of weight coordinates still at their initial
        # values, and how unevenly the others have been trained.
        never, cv = self.core.train_counts.summary()
        record.metrics |= {"never-trained-fraction": never, "train-count-cv": cv, "full-model-bytes": self.core.full_model_bytes}
        record.metrics |= round_metrics(record, accepted, applied, self.core.group_sizes)
        self.failures.check(server_round, record, accepted)
        if not applied:  # Flower keeps the arrays it has, which are still the evaluated model
            return None, MetricRecord(headline(record.metrics))
        self.handed = self.evaluated_arrays(server_round)
        return self.handed, MetricRecord(headline(record.metrics))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Federated evaluation: sampled nodes evaluate the sub-model they can hold (their window of
        the latest plan, at the current θ) on their local held-out data."""
        server_round = self.run_round(server_round)
        record = self.rounds.get(server_round)
        if self.fraction_evaluate == 0.0 or record is None or record.plan is None:
            return []
        pids = sorted(record.sent)
        chosen = random.Random(f"{self.seed}-eval-{server_round}").sample(pids, max(1, round(self.fraction_evaluate * len(pids))))
        settings = protocol.RoundSettings(0.0, int(self.seed))
        messages = []
        for pid in chosen:
            pp = record.plan.participants[pid]
            content = protocol.plan_message(ArrayRecord(self.core.download(pp)), pp, server_round, settings, config)
            messages.append(Message(content, dst_node_id=record.sent[pid], message_type=MessageType.EVALUATE))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        read = [protocol.read_evaluate_reply(m.content) for m in replies if not m.has_error()]
        read = [r for r in read if r is not None and r[2] > 0]
        n = sum(k for _, _, k in read)
        if n == 0:
            return None
        loss, accuracy = sum(k * v for v, _, k in read) / n, sum(k * a for _, a, k in read) / n
        return MetricRecord({"federated-loss": loss, "federated-accuracy": accuracy, "federated-examples": n})

    # -- the global model ------------------------------------------------------------------
    def evaluated_model(self, server_round: int | None = None) -> nn.Module:
        """The evaluated model (θ scaled by the planner's inclusion rule), then ``prepare_model``
        (told ``server_round``, the run round the model ends, or None outside a round)."""
        model = self.core.global_model()
        if self.prepare_model is not None:
            self.prepare_model(server_round, model)
        return model

    def evaluated_arrays(self, server_round: int | None = None) -> ArrayRecord:
        return ArrayRecord(model_state(self.evaluated_model(server_round)))

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The evaluated model under its own keys (what a user loads), beside the core's state."""
        tensors, extra = self.core.checkpoint_state()
        model = (self.handed or self.evaluated_arrays()).to_torch_state_dict()
        return model | tensors, extra
