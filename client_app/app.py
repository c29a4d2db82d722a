"""The MSfusion ClientApp: answer the capacity query, train the received sub-model, evaluate it.

``make_client_app(setup)`` builds the ClientApp for any model: ``setup(context)`` says what the
node has (its model family as a ``Participant``, its data, its capacity, its training settings).
``app`` is the project's own, configured from the run config. Each handler turns a message into
msfusion_core objects and back. A message that cannot be honoured (a plan that does not fit the
model, arrays that do not match the plan, a missing key) gets an error reply that says why, never
a silently wrong update.

A node's own settings come from its node config: ``partition-id`` and ``num-partitions``,
``split-ratio`` (its capacity), ``memory-budget-mb`` (measure which capacity fits instead:
``client_app.footprint``) and ``cache-dir`` (where it keeps its partition and its measurements
between the fresh processes a SuperNode starts for every message).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from client_app import footprint
from msfusion_app import protocol
from msfusion_app.settings import Settings
from msfusion_core.data import TensorData, load_partition, load_test
from msfusion_core.local.participant import Participant, PreviousSubmodel
from msfusion_core.method.planner import ParticipantPlan, check_capacity
from msfusion_core.local.training import TrainConfig, calibrate_batchnorm, evaluate

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
    scaler: bool = False
    bn_calibration_batches: int = 8
    seed: int | None = None  # None: derived from the run's seed (sent by the server) and the partition id
    memory_budget_mb: float | None = None  # declare the largest capacity <= ``capacity`` whose training fits (client_app.footprint)


def make_client_app(setup: Callable[[Context], NodeSetup]) -> ClientApp:
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Tell the server this node's partition id and capacity: its ``split-ratio``, or, with a
        memory budget, the largest capacity tier whose measured training fits it."""
        try:
            node = setup(context)
            capacity = node.capacity
            if node.memory_budget_mb is not None:
                capacity, found = footprint.capacity_for_budget(
                    setup, context.run_config, context.node_config, node.memory_budget_mb, cap=node.capacity
                )
                log(INFO, "memory budget %g MB: capacity %g (%s)", node.memory_budget_mb, capacity, footprint.describe(found))
        except (ValueError, KeyError, RuntimeError) as exc:
            return error_reply(msg, exc)
        return Message(protocol.capacity_reply(node.partition_id, capacity), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        started = time.perf_counter()
        try:
            node = setup(context)
            plan, received, server_round, settings = read_message(msg, node.participant)
            train_config = with_server_settings(node.train_config, settings)
            seed = node_seed(node, settings)
            data = node.train_data()
        except (ValueError, KeyError) as exc:
            return error_reply(msg, exc)
        if 0 < node.examples_per_round < int(data.y.shape[0]):
            rng = np.random.default_rng([seed, server_round, node.partition_id])
            pick = torch.from_numpy(rng.permutation(int(data.y.shape[0]))[: node.examples_per_round])
            data = TensorData(data.x[pick], data.y[pick])
        update, keep = node.participant.train(
            plan,
            received,
            data,
            train_config,
            previous=load_previous(context),
            scaler=node.scaler,
            seed=seed * 100_003 + server_round,
            round_index=server_round - 1,
        )
        save_previous(context, keep)
        metrics = {
            "num-examples": update.result.num_examples,
            "loss": update.result.loss,
            "ce-loss": update.result.ce_loss,
            "contrastive-loss": update.result.contrastive_loss,
            "distill-loss": update.result.distill_loss,
            "flops": float(update.result.flops),
            "bytes-down": update.bytes_down,
            "bytes-up": update.bytes_up,
            "train-seconds": update.result.seconds,
            "build-seconds": time.perf_counter() - started - update.result.seconds,
        }
        return Message(protocol.train_reply(update.state, metrics), reply_to=msg)

    @app.evaluate()
    def evaluate_submodel(msg: Message, context: Context) -> Message:
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

    return app


def with_server_settings(cfg: TrainConfig, settings: ConfigRecord) -> TrainConfig:
    """The node's training settings, with those the server decides for every node applied: μ, and
    the round's learning-rate multiplier (``lr-factor``, the server's schedule)."""
    if "contrastive-mu" in settings:
        mu = settings["contrastive-mu"]
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not mu >= 0:
            raise ValueError(f"the server sent contrastive-mu={mu!r}; expected a number >= 0")
        cfg = dataclasses.replace(cfg, mu=float(mu))
    if "lr-factor" in settings:
        factor = settings["lr-factor"]
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
            raise ValueError(f"the server sent lr-factor={factor!r}; expected a positive number")
        cfg = dataclasses.replace(cfg, lr=cfg.lr * float(factor))
    return cfg


def node_seed(node: NodeSetup, settings: ConfigRecord) -> int:
    """The node's own seed if it set one, else one derived from the run's seed and its partition
    id, so that no two nodes draw the same batches."""
    if node.seed is not None:
        return node.seed
    return int(np.random.SeedSequence([int(settings.get("run-seed", 0)), node.partition_id]).generate_state(1)[0])


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


def read_message(msg: Message, part: Participant) -> tuple[ParticipantPlan, dict[str, torch.Tensor], int, ConfigRecord]:
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


# -- the project's own ClientApp, configured by the run config --------------------------------
@lru_cache(maxsize=4)
def _participant(model: str, width: int, layers: int, dataset: str, data_path: str, tokenizer: str) -> Participant:
    family = Settings(model=model, model_width=width, model_layers=layers, dataset=dataset, data_path=data_path, tokenizer=tokenizer).family()
    return Participant(family.build, family.split_map, family.representation_layer, family.local_keys, family.post_build)


def setup_from_run_config(context: Context) -> NodeSetup:
    """Partition id and count from the node config (simulation sets them; a SuperNode gets them
    from ``--node-config``); capacity from the node's ``split-ratio``, else the run config's tiers."""
    settings = Settings.from_mapping(context.run_config)
    try:
        pid, num = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as exc:
        raise ValueError(
            f"node config lacks {exc.args[0]!r}; start the SuperNode with --node-config 'partition-id=.. num-partitions=..'"
        ) from exc
    if not 0 <= pid < num:
        raise ValueError(f"partition-id {pid} is outside [0, num-partitions={num})")
    budget = memory_budget(context)
    if budget is not None and "split-ratio" not in context.node_config:
        capacity = 1.0  # the budget alone decides
    else:
        capacity = node_capacity(context, settings.capacity_tiers())
    path = settings.data_path or None
    cache = context.node_config.get(footprint.CACHE_DIR_KEY)

    def load() -> TensorData:
        return load_partition(
            settings.dataset, path, settings.partitioner, num, pid, settings.dirichlet_alpha, settings.seed, settings.seq_len,
            holdout=settings.validation_examples, tokenizer=settings.tokenizer,
        )

    def train_data() -> TensorData:
        if not cache:
            return load()
        parts = (settings.dataset, settings.partitioner, num, pid, settings.dirichlet_alpha, settings.seed, settings.seq_len)
        key = (*parts, settings.validation_examples, settings.tokenizer, data_identity(path))
        return cached_tensors(Path(str(cache)).expanduser() / "partitions", key, load)

    def test_data() -> TensorData:
        test = load_test(settings.dataset, path, seq_len=settings.seq_len, tokenizer=settings.tokenizer)
        share = torch.arange(pid, int(test.y.shape[0]), num)  # an IID 1/num share of the test split
        return TensorData(test.x[share], test.y[share])

    return NodeSetup(
        participant=_participant(
            settings.model, settings.model_width, settings.model_layers, settings.dataset, settings.data_path, settings.tokenizer
        ),
        partition_id=pid,
        capacity=capacity,
        train_config=settings.train_config(),
        train_data=train_data,
        test_data=test_data,
        examples_per_round=settings.local_examples,
        scaler=settings.scaler,
        bn_calibration_batches=settings.bn_calibration_batches,
        seed=settings.seed,
        memory_budget_mb=budget,
    )


def data_identity(path: str | None) -> list:
    """The files under a data folder (names, sizes, modification times): a cached partition is
    stale once any of them changes. Hidden entries (the tokenizer cache written there) are skipped."""
    if path is None:
        return []
    root = Path(path).expanduser().resolve()
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            stat = (Path(folder) / name).stat()
            found.append([str((Path(folder) / name).relative_to(root)), stat.st_size, stat.st_mtime_ns])
    return [str(root), found]


def cached_tensors(folder: Path, key: tuple, load: Callable[[], TensorData]) -> TensorData:
    """``load()``'s tensors, kept in ``folder`` under ``key``'s hash: a SuperNode starts a fresh
    ClientApp process for every message, and reading its partition back costs no data library. An
    unreadable entry is loaded again and rewritten."""
    from safetensors.torch import load_file, save_file

    file = folder / (hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:32] + ".safetensors")
    try:
        tensors = load_file(file)
        return TensorData(tensors["x"], tensors["y"])
    except Exception:  # noqa: BLE001 - absent, truncated or not safetensors (SafetensorError): loaded again
        pass
    data = load()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        save_file({"x": data.x.contiguous(), "y": data.y.contiguous()}, str(tmp))
        tmp.replace(file)
    except OSError as exc:
        log(WARNING, "could not keep the partition in %s (%s): it will be loaded again next round", folder, exc)
    return data


app = make_client_app(setup_from_run_config)
