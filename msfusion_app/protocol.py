"""The wire protocol between the MSfusion ServerApp and ClientApp: every message both ways, defined once.

    QUERY     server → node   {plan: {query: "capacity"}}
              node → server   {node: {partition-id, split-ratio}}
    TRAIN     server → node   {arrays: the sub-model, plan: {server-round, plan (compact JSON)}, settings: RoundSettings}
              node → server   {arrays: the trained parameters, metrics: {num-examples, loss, flops, ...}}
    EVALUATE  server → node   as TRAIN
              node → server   {metrics: {loss, accuracy, num-examples}}

Arrays are decoded one way on both sides (``decode_arrays``) and checked by one rule
(``msfusion_core.method.checks.check_arrays``: by the server in ``SubmodelServer.validate``, by the
node in ``Participant.check_received``). Bytes are the tensors' payload, ``payload_bytes``, both ways.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from msfusion_core.local.measure import num_bytes as payload_bytes
from msfusion_core.method.contrastive import check_mu
from msfusion_core.method.planner import ParticipantPlan, check_capacity
from msfusion_core.method.server import Reply, ReplyError

ARRAYS_KEY, PLAN_KEY, METRICS_KEY, NODE_KEY, SETTINGS_KEY = "arrays", "plan", "metrics", "node", "settings"

__all__ = [
    "ARRAYS_KEY",
    "METRICS_KEY",
    "NODE_KEY",
    "PLAN_KEY",
    "PlanMessage",
    "RoundSettings",
    "SETTINGS_KEY",
    "capacity_query",
    "read_capacity_query",
    "capacity_reply",
    "decode_arrays",
    "evaluate_reply",
    "payload_bytes",
    "plan_message",
    "read_capacity_reply",
    "read_evaluate_reply",
    "read_plan_message",
    "read_train_reply",
    "train_reply",
]


def decode_arrays(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Writable tensors from an ArrayRecord; ValueError (never a crash) when one cannot be decoded."""
    try:
        return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}
    except Exception as exc:  # a corrupt Array: numpy's or Flower's error, whatever it is
        raise ValueError(f"arrays could not be decoded: {exc}") from exc


# -- capacity ------------------------------------------------------------------------------------
def capacity_query(depth_share: float = 0.0) -> RecordDict:
    """``depth-share``: how the server's planner spends a capacity on blocks against width
    (``axis_capacity``), so that a node with a memory budget measures the sub-models it will train."""
    return RecordDict({PLAN_KEY: ConfigRecord({"query": "capacity", "depth-share": float(depth_share)})})


def read_capacity_query(content: RecordDict) -> float:
    """The query's ``depth-share`` (0 from a server that does not send one)."""
    share = content[PLAN_KEY].get("depth-share", 0.0) if PLAN_KEY in content.config_records else 0.0
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise ValueError(f"the capacity query's depth-share must be in [0, 1], got {share!r}")
    return float(share)


def capacity_reply(partition_id: int, capacity: float) -> RecordDict:
    return RecordDict({NODE_KEY: ConfigRecord({"partition-id": int(partition_id), "split-ratio": float(capacity)})})


def read_capacity_reply(content: RecordDict, default_capacity: float, who: str) -> tuple[int, float]:
    """(partition id, capacity); a node that declares no ``split-ratio`` gets ``default_capacity``."""
    try:
        cfg = content.config_records[NODE_KEY]
        return int(cfg["partition-id"]), check_capacity(cfg.get("split-ratio", default_capacity), who)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"no {exc!r} in the node's record") from exc


# -- plans: TRAIN and EVALUATE -------------------------------------------------------------------
@dataclass(frozen=True)
class RoundSettings:
    """What the server decides for every node each round: MSfusion's contrastive weight μ, the run's
    seed (nodes derive their own from it) and the learning-rate multiplier of the server's schedule.
    One record, checked when it is made, on either side of the wire."""

    contrastive_mu: float = 0.0
    run_seed: int = 0
    lr_factor: float = 1.0

    def __post_init__(self) -> None:
        check_mu(self.contrastive_mu, "the server's contrastive_mu")
        if isinstance(self.run_seed, bool) or not isinstance(self.run_seed, int):
            raise ValueError(f"the server's run_seed must be an integer, got {self.run_seed!r}")
        factor = self.lr_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
            raise ValueError(f"the server sent lr_factor={factor!r}; expected a positive number")

    def record(self) -> ConfigRecord:
        return ConfigRecord(asdict(self))

    @classmethod
    def read(cls, record: ConfigRecord) -> RoundSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})


def plan_message(arrays: ArrayRecord, plan: ParticipantPlan, server_round: int, settings: RoundSettings, extra: Mapping[str, Any] | None = None) -> RecordDict:
    """A node's sub-model, its plan and the round's settings; ``extra``: a caller's own config
    (Flower's ``train_config``), sent beside the plan."""
    cfg = ConfigRecord(dict(extra or {}) | {"server-round": int(server_round), "plan": json.dumps(plan.to_compact())})
    return RecordDict({ARRAYS_KEY: arrays, PLAN_KEY: cfg, SETTINGS_KEY: settings.record()})


@dataclass(frozen=True)
class PlanMessage:
    compact_plan: dict[str, Any]  # to verify against the node's own model (Participant.read_plan)
    arrays: dict[str, torch.Tensor]
    server_round: int
    settings: RoundSettings


def read_plan_message(content: RecordDict) -> PlanMessage:
    if ARRAYS_KEY not in content.array_records or PLAN_KEY not in content.config_records:
        raise ValueError(f"message needs an ArrayRecord {ARRAYS_KEY!r} and a ConfigRecord {PLAN_KEY!r}")
    cfg = content.config_records[PLAN_KEY]
    if "plan" not in cfg or "server-round" not in cfg:
        raise ValueError("config record lacks 'plan' or 'server-round'")
    try:
        compact = json.loads(str(cfg["plan"]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"plan is not valid JSON: {exc}") from exc
    settings = RoundSettings.read(content.config_records[SETTINGS_KEY]) if SETTINGS_KEY in content.config_records else RoundSettings()
    return PlanMessage(compact, decode_arrays(content.array_records[ARRAYS_KEY]), int(cfg["server-round"]), settings)


# -- replies -------------------------------------------------------------------------------------
def train_reply(state: Mapping[str, torch.Tensor], metrics: Mapping[str, int | float]) -> RecordDict:
    return RecordDict({ARRAYS_KEY: ArrayRecord(dict(state)), METRICS_KEY: MetricRecord(dict(metrics))})


def read_train_reply(participant_id: int, content: RecordDict) -> Reply:
    """The reply as the core's ``Reply``; its contents are checked by ``SubmodelServer.validate``."""
    if ARRAYS_KEY not in content.array_records or METRICS_KEY not in content.metric_records:
        raise ReplyError(f"reply needs an ArrayRecord {ARRAYS_KEY!r} and a MetricRecord {METRICS_KEY!r}")
    try:
        state = decode_arrays(content.array_records[ARRAYS_KEY])
    except ValueError as exc:
        raise ReplyError(str(exc)) from exc
    metrics = dict(content.metric_records[METRICS_KEY])
    return Reply(participant_id, state, metrics.get("num-examples"), metrics)


def evaluate_reply(loss: float, accuracy: float, num_examples: int) -> RecordDict:
    return RecordDict({METRICS_KEY: MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": int(num_examples)})})


def read_evaluate_reply(content: RecordDict) -> tuple[float, float, int] | None:
    """(loss, accuracy, examples), or None for a reply without usable metrics."""
    if METRICS_KEY not in content.metric_records:
        return None
    m = content.metric_records[METRICS_KEY]
    try:
        return float(m.get("loss", 0.0)), float(m.get("accuracy", 0.0)), int(m.get("num-examples", 0))
    except (TypeError, ValueError):
        return None
