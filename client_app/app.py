"""The MSfusion ClientApp: answer the capacity query, train the received sub-model, evaluate.

Each handler turns the message into msfusion_core objects and back. A message that cannot be
honoured (a plan that does not fit the model, arrays that do not match the plan, a missing key)
gets an error reply that says why; it is never answered with a silently wrong update.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from msfusion_core.config import Settings
from msfusion_core.data import TensorData, load_partition
from msfusion_core.participant import Participant, PreviousSubmodel
from msfusion_core.planner import ParticipantPlan
from msfusion_core.submodel import build_submodel
from msfusion_core.training import calibrate_batchnorm, evaluate

ARRAYS_KEY, PLAN_KEY, METRICS_KEY, NODE_KEY = "arrays", "plan", "metrics", "node"
PREV_STATE_KEY, PREV_UNITS_KEY = "msfusion-prev-state", "msfusion-prev-units"
CLIENT_ERROR = 2  # flwr ErrorCode.CLIENT_APP_RAISED_EXCEPTION

app = ClientApp()


@lru_cache(maxsize=4)
def participant_for(model: str, width: int, dataset: str) -> Participant:
    fam = Settings(model=model, model_width=width, dataset=dataset).family()
    return Participant(fam.build, fam.split_map, fam.representation_layer)


def node_identity(context: Context, settings: Settings) -> tuple[int, int, float]:
    """(partition id, number of partitions, capacity) from the node config, tiers as fallback."""
    try:
        pid = int(context.node_config["partition-id"])
        num = int(context.node_config["num-partitions"])
    except KeyError as exc:
        raise ValueError(f"node config lacks {exc.args[0]!r}; start the SuperNode with --node-config 'partition-id=.. num-partitions=..'") from exc
    capacity = float(context.node_config.get("split-ratio", settings.capacity_for(pid)))
    return pid, num, capacity


def local_data(settings: Settings, pid: int, num: int, split: str = "train") -> TensorData:
    if split == "train":
        return load_partition(settings.dataset, settings.data_path or None, settings.partitioner, num, pid, settings.dirichlet_alpha, settings.seed)
    from msfusion_core.data import load_test

    test = load_test(settings.dataset, settings.data_path or None)
    share = torch.arange(pid, int(test.y.numel()), num)  # an IID 1/num share of the test split
    return TensorData(test.x[share], test.y[share])


def read_message(msg: Message, context: Context) -> tuple[Settings, Participant, ParticipantPlan, dict[str, torch.Tensor], int]:
    settings = Settings.from_mapping(context.run_config)
    part = participant_for(settings.model, settings.model_width, settings.dataset)
    if ARRAYS_KEY not in msg.content.array_records or PLAN_KEY not in msg.content.config_records:
        raise ValueError(f"message needs an ArrayRecord {ARRAYS_KEY!r} and a ConfigRecord {PLAN_KEY!r}")
    cfg = msg.content.config_records[PLAN_KEY]
    if "plan" not in cfg or "server-round" not in cfg:
        raise ValueError("config record lacks 'plan' or 'server-round'")
    try:
        compact = json.loads(str(cfg["plan"]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"plan is not valid JSON: {exc}") from exc
    plan = part.read_plan(compact)
    received = msg.content.array_records[ARRAYS_KEY].to_torch_state_dict()
    part.check_received(plan, received)
    return settings, part, plan, received, int(cfg["server-round"])


def error_reply(msg: Message, exc: Exception) -> Message:
    return Message(Error(code=CLIENT_ERROR, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server this node's partition id and capacity (`split-ratio`)."""
    try:
        settings = Settings.from_mapping(context.run_config)
        pid, num, capacity = node_identity(context, settings)
    except ValueError as exc:
        return error_reply(msg, exc)
    record = ConfigRecord({"partition-id": pid, "num-partitions": num, "split-ratio": capacity})
    return Message(RecordDict({NODE_KEY: record}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    try:
        settings, part, plan, received, server_round = read_message(msg, context)
        pid, num, _ = node_identity(context, settings)
        data = local_data(settings, pid, num)
    except ValueError as exc:
        return error_reply(msg, exc)
    if settings.local_examples and settings.local_examples < int(data.y.numel()):
        rng = np.random.default_rng([settings.seed, server_round, pid])
        pick = torch.from_numpy(rng.permutation(int(data.y.numel()))[: settings.local_examples])
        data = TensorData(data.x[pick], data.y[pick])
    previous = None
    if PREV_STATE_KEY in context.state.array_records:
        units = context.state.array_records[PREV_UNITS_KEY].to_numpy_ndarrays()
        names = list(context.state.array_records[PREV_UNITS_KEY].keys())
        previous = PreviousSubmodel(context.state.array_records[PREV_STATE_KEY].to_torch_state_dict(), dict(zip(names, units)))
    update, keep = part.train(
        plan, received, data, settings.train_config(), previous=previous, scaler=settings.scaler, seed=settings.seed * 100_003 + server_round
    )
    context.state[PREV_STATE_KEY] = ArrayRecord(keep.state)
    context.state[PREV_UNITS_KEY] = ArrayRecord({g: torch.as_tensor(np.asarray(u)) for g, u in keep.units.items()})
    metrics = MetricRecord(
        {
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
    )
    return Message(RecordDict({ARRAYS_KEY: ArrayRecord(update.state), METRICS_KEY: metrics}), reply_to=msg)


@app.evaluate()
def evaluate_submodel(msg: Message, context: Context) -> Message:
    """Evaluate the sub-model this node can hold (BN calibrated on its training data) on its test share."""
    try:
        settings, part, _plan, received, _ = read_message(msg, context)
        pid, num, _ = node_identity(context, settings)
    except ValueError as exc:
        return error_reply(msg, exc)
    model = build_submodel(part.build, received)
    calibrate_batchnorm(model, local_data(settings, pid, num), settings.dataset, num_batches=settings.bn_calibration_batches)
    test = local_data(settings, pid, num, "test")
    loss, accuracy = evaluate(model, test, settings.dataset)
    metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": int(test.y.numel())})
    return Message(RecordDict({METRICS_KEY: metrics}), reply_to=msg)
