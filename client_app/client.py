"""The MSfusion ClientApp for any model: answer the capacity query, train the received sub-model,
evaluate it.

``make_client_app(setup)`` builds it: ``setup(context)`` says what the node has (its model family as
a ``Participant``, its data, its capacity, its training settings). Each handler turns a message
into msfusion_core objects and back. A message that cannot be honoured (a plan that does not fit
the model, arrays that do not match the plan, a missing key) gets an error reply that says why,
never a silently wrong update.

A node's own settings come from its node config: ``partition-id`` and ``num-partitions``,
``split-ratio`` (its capacity), ``memory-budget-mb`` (measure which capacity fits instead:
``client_app.footprint``) and ``cache-dir`` (where it keeps its partition and its measurements
between the fresh processes a SuperNode starts for every message).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from logging import INFO

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from client_app import footprint
from msfusion_app import protocol
from msfusion_core.data.tensors import TensorData
from msfusion_core.local.participant import Participant, PreviousSubmodel
from msfusion_core.local.training import TrainConfig, calibrate_batchnorm, evaluate
from msfusion_core.method.planner import ParticipantPlan, check_capacity


PREV_STATE_KEY, PREV_UNITS_KEY = "msfusion-prev-state", "msfusion-prev-units"
CLIENT_ERROR = 2  # flwr ErrorCode.CLIENT_APP_RAISED_EXCEPTION


@dataclass(frozen=True)
class NodeSetup:
    """What a node brings: ``train_data``/``test_data`` are called only when needed (data loading
    is the slow part of a fresh ClientApp process)."""

    participant: Participant
    partition_id: int
    capacity: float
    train_config: TrainConfig
    train_data: Callable[[], TensorData]
    test_data: Callable[[], TensorData]
    examples_per_round: int = 0  # a fresh random subset of this many local examples per round; 0: all
    bn_calibration_batches: int = 8  # BatchNorm statistics of the sub-model a node evaluates (0: none)
    seed: int | None = None  # None: derived from the run's seed (sent by the server) and the partition id
    memory_budget_mb: float | None = None  # declare the largest capacity <= ``capacity`` whose training fits (client_app.footprint)


def make_client_app(setup: Callable[[Context], NodeSetup]) -> ClientApp:
    app = ClientApp()
    app.query()(lambda msg, context: answer_query(setup, msg, context))
    app.train()(lambda msg, context: train(setup, msg, context))
    app.evaluate()(lambda msg, context: evaluate_submodel(setup, msg, context))
    return app


def answer_query(setup: Callable[[Context], NodeSetup], msg: Message, context: Context) -> Message:
    """Tell the server this node's partition id and capacity: its ``split-ratio``, or, with a
    memory budget, the largest capacity tier whose measured training fits it."""
    try:
        node = setup(context)
        capacity = node.capacity
        if node.memory_budget_mb is not None:
            capacity, found = footprint.capacity_for_budget(
                setup, context.run_config, context.node_config, node.memory_budget_mb, cap=node.capacity,
                depth_share=protocol.read_capacity_query(msg.content), node=node,
            )
            log(INFO, "memory budget %g MB: capacity %g (%s)", node.memory_budget_mb, capacity, footprint.describe(found))
    except (ValueError, KeyError, RuntimeError) as exc:
        return error_reply(msg, exc)
    return Message(protocol.capacity_reply(node.partition_id, capacity), reply_to=msg)


def train(setup: Callable[[Context], NodeSetup], msg: Message, context: Context) -> Message:
    """Train the received sub-model on this round's local examples; reply with its parameters."""
    started = time.perf_counter()
    try:
        node = setup(context)
        plan, received, server_round, settings = read_message(msg, node.participant)
        train_config = with_server_settings(node.train_config, settings)
        seed = node_seed(node, settings)
        data = round_examples(node, node.train_data(), seed, server_round)
    except (ValueError, KeyError) as exc:
        return error_reply(msg, exc)
    update, keep = node.participant.train(
        plan, received, data, train_config, previous=load_previous(context), seed=seed * 100_003 + server_round, round_index=server_round - 1
    )
    save_previous(context, keep)
    metrics = {
        "num-examples": update.result.num_examples,
        "loss": update.result.loss,
        "ce-loss": update.result.ce_loss,
        "contrastive-loss": update.result.contrastive_loss,
        "flops": float(update.result.flops),
        "bytes-down": update.bytes_down,
        "bytes-up": update.bytes_up,
        "train-seconds": update.result.seconds,
        "build-seconds": time.perf_counter() - started - update.result.seconds,
    }
    return Message(protocol.train_reply(update.state, metrics), reply_to=msg)


def round_examples(node: NodeSetup, data: TensorData, seed: int, server_round: int) -> TensorData:
    """A fresh random subset of ``examples_per_round`` local examples, or all of them."""
    if not 0 < node.examples_per_round < int(data.y.shape[0]):
        return data
    rng = np.random.default_rng([seed, server_round, node.partition_id])
    pick = torch.from_numpy(rng.permutation(int(data.y.shape[0]))[: node.examples_per_round])
    return TensorData(data.x[pick], data.y[pick])


def evaluate_submodel(setup: Callable[[Context], NodeSetup], msg: Message, context: Context) -> Message:
    """Evaluate the sub-model this node can hold (BN calibrated on its training data) on its test data."""
    try:
        node = setup(context)
        _plan, received, _, _ = read_message(msg, node.participant)
    except (ValueError, KeyError) as exc:
        return error_reply(msg, exc)
    model = node.participant.model(received)
    preprocess = node.train_config.preprocess
    if node.bn_calibration_batches:
        calibrate_batchnorm(model, node.train_data(), preprocess, num_batches=node.bn_calibration_batches)
    test = node.test_data()
    loss, accuracy = evaluate(model, test, preprocess)
    return Message(protocol.evaluate_reply(loss, accuracy, int(test.y.shape[0])), reply_to=msg)


def with_server_settings(cfg: TrainConfig, settings: protocol.RoundSettings) -> TrainConfig:
    """The node's training settings, with those the server decides for every node applied: μ, and
    the round's learning-rate multiplier (the server's schedule)."""
    return dataclasses.replace(cfg, mu=settings.contrastive_mu, lr=cfg.lr * settings.lr_factor)


def node_seed(node: NodeSetup, settings: protocol.RoundSettings) -> int:
    """The node's own seed if it set one, else one derived from the run's seed and its partition
    id, so that no two nodes draw the same batches."""
    if node.seed is not None:
        return node.seed
    return int(np.random.SeedSequence([settings.run_seed, node.partition_id]).generate_state(1)[0])


def memory_budget(context: Context) -> float | None:
    """The node's ``memory-budget-mb``, if it declares one."""
    if footprint.MEMORY_BUDGET_KEY not in context.node_config:
        return None
    budget = context.node_config[footprint.MEMORY_BUDGET_KEY]
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < math.inf:
        raise ValueError(f"{footprint.MEMORY_BUDGET_KEY} must be a positive number of MB, got {budget!r}")
    return float(budget)


def node_capacity(context: Context, tiers: Sequence[float] = (0.5,)) -> float:
    """This node's capacity (the fraction of every split layer it can train).

    A node that declares one, as a SuperNode does with ``--node-config 'split-ratio=0.25'``, gets
    its own. A simulated node cannot declare one (`flwr run` gives it only ``partition-id`` and
    ``num-partitions``), so it gets ``tiers[partition-id % len(tiers)]``: with ``(1.0, 0.5, 0.25)``
    nodes 0, 3, 6, ... are full width, nodes 1, 4, ... half width, and so on."""
    if "split-ratio" in context.node_config:
        return check_capacity(context.node_config["split-ratio"], "this node (split-ratio)")
    if not tiers:
        raise ValueError("tiers is empty: give at least one capacity")
    try:
        pid = int(context.node_config["partition-id"])
    except KeyError as exc:
        raise ValueError("node config has neither 'split-ratio' nor 'partition-id'; start the SuperNode with --node-config 'split-ratio=..'") from exc
    return check_capacity(tiers[pid % len(tiers)], f"tier of partition {pid}")


def read_message(msg: Message, part: Participant) -> tuple[ParticipantPlan, dict[str, torch.Tensor], int, protocol.RoundSettings]:
    """The plan (rebuilt and verified against this node's model), the received arrays (checked
    against it), the round, and the settings the server sent with the plan."""
    read = protocol.read_plan_message(msg.content)
    plan = part.read_plan(read.compact_plan)
    part.check_received(plan, read.arrays)
    return plan, read.arrays, read.server_round, read.settings


def load_previous(context: Context) -> PreviousSubmodel | None:
    """The previous local sub-model (the contrastive negative), kept in the node's Flower state."""
    if PREV_STATE_KEY not in context.state.array_records:
        return None
    units = context.state.array_records[PREV_UNITS_KEY]
    return PreviousSubmodel(
        context.state.array_records[PREV_STATE_KEY].to_torch_state_dict(), {g: a.numpy() for g, a in units.items()}
    )


def save_previous(context: Context, keep: PreviousSubmodel) -> None:
    context.state[PREV_STATE_KEY] = ArrayRecord(keep.state)
    context.state[PREV_UNITS_KEY] = ArrayRecord({g: torch.as_tensor(np.asarray(u)) for g, u in keep.units.items()})


def error_reply(msg: Message, exc: Exception) -> Message:
    return Message(Error(code=CLIENT_ERROR, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
