"""What a round did, as the strategy records it: its log (``RoundLog``), its row of metrics, the
headline it reports to Flower's ``Result`` and the one progress line it prints."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.common.logger import log

from msfusion_app.protocol import payload_bytes
from msfusion_core.method.aggregate import AggregateResult
from msfusion_core.method.planner import RoundPlan, Window
from msfusion_core.method.server import Reply


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

    def fail(self, server_round: int, node: int, reason: str) -> None:
        self.failed.append((node, reason))
        log(WARNING, "round %d: node %d failed: %s", server_round, node, reason)


def aggregate_metrics(result: AggregateResult) -> dict[str, Any]:
    hist = result.coverage_histogram
    return {
        "model-shift": result.model_shift,
        "model-shift-floor": result.shift_floor,
        "relative-shift": result.relative_shift,
        "shared-fraction": result.shared_fraction,
        "covered-fraction": result.covered_fraction,
        "coordinate-coverage-histogram": [hist.get(c, 0) for c in range(max(hist) + 1)],
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def round_metrics(record: RoundLog, accepted: list[Reply], applied: bool, group_sizes: Mapping[str, int]) -> dict[str, Any]:
    """The round's row. Every value read from a reply was checked by ``SubmodelServer.validate``."""

    def mean(key: str) -> float:
        return _mean([float(r.metrics[key]) for r in accepted if key in r.metrics])

    plan = record.plan
    n = sum(r.num_examples for r in accepted)
    hist = plan.coverage_histogram(group_sizes) if plan else {}
    return {
        "participants": len(record.sent),
        "accepted": len(accepted),
        "rejected": len(record.rejected),
        "failed": len(record.failed),
        "applied": int(applied),
        "num-examples": n,
        "train-loss": sum(float(r.metrics["loss"]) * r.num_examples for r in accepted) / n if n else float("nan"),
        "overlap": plan.overlap if plan else float("nan"),
        # Where the lowest-id participant's window of the first group starts: it moves every round
        # under double shifting, and stays put under a fixed prefix (HeteroFL, o = 1).
        "first-window-start": first_window_start(plan) if plan else float("nan"),
        "spread": plan.spread if plan else float("nan"),
        "flops-per-participant": mean("flops"),
        "flops-per-participant-max": max((float(r.metrics["flops"]) for r in accepted), default=float("nan")),
        # Bytes both ways by one definition, the tensors' payload; the serialised size is its own column.
        "bytes-down-per-participant": _mean(list(record.bytes_down.values())),
        "bytes-up-per-participant": _mean([payload_bytes(r.state) for r in accepted]),
        "bytes-down-serialized-per-participant": _mean(list(record.bytes_down_serialized.values())),
        "train-seconds-per-participant": mean("train-seconds"),
        "build-seconds-per-participant": mean("build-seconds"),
        "server-plan-slice-seconds": record.seconds.get("plan_and_slice", float("nan")),
        "server-aggregate-seconds": record.seconds.get("aggregate", float("nan")),
        "coverage-histogram": [hist.get(c, 0) for c in range(max(hist, default=0) + 1)],
    }


def first_window_start(plan: RoundPlan) -> float:
    """Where the first participant's first split window starts (a group it holds whole says nothing of the shift)."""
    first = plan.participants[min(plan.participants)]
    windows = [w for w in first.groups.values() if isinstance(w, Window)]
    split = [w for w in windows if w.length < w.size] or windows
    return float(split[0].start) if split else float("nan")


# What a round reports to Flower's Result.train_metrics_clientapp; the whole row is ``strategy.rounds[t].metrics``.
HEADLINE_METRICS = ("participants", "accepted", "rejected", "failed", "applied", "train-loss", "overlap", "bytes-down-per-participant")


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in HEADLINE_METRICS if _number(metrics.get(k))}


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
    """One line per round: what ``evaluate_fn`` returned, then the round's ``PROGRESS_FIELDS``. A
    figure the round does not have (a dense planner's overlap, no evaluation) is left out rather
    than printed as nan; ``seconds`` is the whole round's."""
    shown = [f"{k}={v:.4f}" for k, v in evaluated.items() if _finite(v)]
    shown += [f"{name}={spec.format(figures[key])}" for name, key, spec in PROGRESS_FIELDS if _finite(figures.get(key))]
    return f"[round {server_round}] " + " ".join(shown) + f" ({seconds:.1f}s)"


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    return _number(value) and math.isfinite(value)


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
