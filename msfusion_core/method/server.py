"""The server's side of MSfusion with no FL framework: global state, plans, slices, validation and
aggregation. A Flower strategy (server_app/) only moves these objects in and out of messages."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from msfusion_core.method.aggregate import AggregateResult, Contribution, scatter_average
from msfusion_core.method.checks import check_arrays
from msfusion_core.method.coverage import TrainCounts
from msfusion_core.method.inclusion import scale_inputs
from msfusion_core.local.measure import num_bytes
from msfusion_core.method.planner import ParticipantPlan, Planner, RoundPlan
from msfusion_core.method.slicing import Slicer
from msfusion_core.method.split_map import SplitMap, group_sizes, model_shapes, model_state
from msfusion_core.method.submodel import build_submodel

THETA_PREFIX = "resume/theta/"  # checkpoint keys of θ, the state training continues from


class ReplyError(ValueError):
    """A participant's reply that must not touch the global model; the message says why."""


@dataclass(frozen=True)
class Reply:
    node_id: int
    state: Mapping[str, torch.Tensor]
    num_examples: int
    # The participant's training metrics, as sent; None when the caller keeps no metrics (a
    # framework-free loop). A Flower reply always has a record, and it is checked.
    metrics: Mapping[str, Any] | None = None


# A reply's training metrics: the keys the server needs must be there, and every number in the
# record must be finite (the server sums losses, bytes and seconds across replies; a single NaN
# poisons the round's figures). A count, a size or a duration is also non-negative.
REQUIRED_METRICS = ("num-examples", "loss", "flops")
NON_NEGATIVE_METRICS = ("flops", "bytes-down", "bytes-up", "train-seconds", "build-seconds")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_train_metrics(metrics: Mapping[str, Any]) -> None:
    """Raise ReplyError naming the first metric the server cannot use."""
    missing = [k for k in REQUIRED_METRICS if k not in metrics]
    if missing:
        raise ReplyError(f"metrics lack {', '.join(repr(k) for k in missing)}")
    for key, value in metrics.items():
        if key in REQUIRED_METRICS and not _is_number(value):
            raise ReplyError(f"metric {key!r} must be a number, got {type(value).__name__} {value!r}")
        numbers = [v for v in (value if isinstance(value, (list, tuple)) else [value]) if _is_number(v)]
        if not all(math.isfinite(v) for v in numbers):
            raise ReplyError(f"metric {key!r} is not finite: {value!r}")
        if key in NON_NEGATIVE_METRICS and any(v < 0 for v in numbers):
            raise ReplyError(f"metric {key!r} must be non-negative, got {value!r}")


class SubmodelServer:
    """The one owner of the global model: θ (parameters and buffers), the planner, the round's
    plan, aggregation, the evaluated model and everything a checkpoint holds.

    Parameters travel both ways; buffers (BatchNorm running statistics) travel down only, since
    the static-BN policy recomputes them for whichever model is evaluated.
    """

    def __init__(
        self,
        build: Callable[[], nn.Module],
        split_map: SplitMap,
        planner: Planner,
        *,
        seed: int = 0,
        local_keys: Collection[str] = (),
        post_build: Callable[[nn.Module], None] | None = None,
    ) -> None:
        torch.manual_seed(seed)
        model = build()
        self.build = build
        self.post_build = post_build  # the family's sub-model hook (ModelFamily.post_build)
        self.slicer = Slicer(split_map)
        self.split_map = split_map
        self.planner = planner
        self.group_sizes = group_sizes(model_shapes(model), split_map)
        # Local tensors (frozen, every party builds them itself) are kept for evaluation, never sent.
        self.local_keys = frozenset(local_keys)
        state = {k: v.clone() for k, v in model_state(model).items()}
        # What a full-capacity participant receives (parameters and buffers, never local tensors).
        self.full_model_bytes = num_bytes({k: v for k, v in state.items() if k not in self.local_keys})
        # The planner decides the global model's width (``small``: the width-r prefix of every group).
        self.global_units = planner.global_units(self.group_sizes)
        if self.global_units is not None:
            state = self.slicer.extract(state, self.global_units)
            self.group_sizes = self.group_sizes.resized({g: len(i) for g, i in self.global_units.items()})
        self.state: dict[str, torch.Tensor] = state
        # θ's trained tensors (``shallow``'s global model keeps only its first blocks).
        self.param_keys = [k for k, _ in model.named_parameters() if k in state and k not in self.local_keys]
        self.last_plan: RoundPlan | None = None  # what θ was last trained under (the evaluated model's scaling)
        self.resumed_after = 0  # the run round a restored checkpoint ended (0: a fresh run)
        self.train_counts = TrainCounts(self.slicer, {k: tuple(self.state[k].shape) for k in self.param_keys})

    # -- planning and slicing -------------------------------------------------------------
    def plan_round(self, server_round: int, participants: Sequence[tuple[int, float]]) -> RoundPlan:
        self.last_plan = self.planner.plan(server_round, participants, self.group_sizes)
        return self.last_plan

    def download(self, plan: ParticipantPlan) -> dict[str, torch.Tensor]:
        """The sub-model state sent to a participant: every parameter and buffer but the local ones, sliced."""
        keys = [k for k in self.state if k not in self.local_keys]
        return self.slicer.extract(self.state, plan.unit_indices(), keys)

    def reply_spec(self, plan: ParticipantPlan) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The reply's parameters under the sub-model's own (local) keys, with their shapes and dtypes."""
        units = plan.unit_indices()
        held = self.slicer.held(self.param_keys, units)
        return {local: (self.slicer.sub_shape(k, self.state[k].shape, units), self.state[k].dtype) for k, local in held.items()}

    # -- replies ---------------------------------------------------------------------------
    def validate(self, plan: ParticipantPlan, reply: Reply) -> None:
        """Raise ReplyError naming the first problem of a reply against the plan it answers."""
        if not isinstance(reply.num_examples, int) or isinstance(reply.num_examples, bool) or reply.num_examples <= 0:
            raise ReplyError(f"num-examples must be a positive integer, got {reply.num_examples!r}")
        if reply.metrics is not None:
            check_train_metrics(reply.metrics)
        expected = self.reply_spec(plan)
        try:
            check_arrays(reply.state, {k: s for k, (s, _) in expected.items()}, "reply", {k: d for k, (_, d) in expected.items()})
        except ValueError as exc:
            raise ReplyError(str(exc)) from exc

    def aggregate(self, plan: RoundPlan, replies: Sequence[Reply]) -> AggregateResult:
        """Aggregate validated replies into θ and feed the model shift back to the planner.

        Replies are taken in participant order, so the result does not depend on arrival order."""
        replies = sorted(replies, key=lambda r: r.node_id)
        contributions = []
        for r in replies:
            units = plan.participants[r.node_id].unit_indices()
            contributions.append(Contribution(units, self.slicer.to_global(r.state, units), float(r.num_examples)))
        result = scatter_average(self.state, contributions, self.slicer, self.param_keys)
        self.state = result.state
        self.train_counts.add(plan.participants[r.node_id] for r in replies)
        if math.isfinite(result.relative_shift):
            self.planner.observe(plan.server_round, result.relative_shift)
        return result

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace θ (same keys and shapes: a clear error otherwise). When the global model keeps only
        some units (``small``), a full-width model's state is accepted too, and cut the same way."""
        if self.global_units is not None and any(k in state and tuple(state[k].shape) != tuple(t.shape) for k, t in self.state.items()):
            fits = all(k in state for k in self.state)
            try:
                state = self.slicer.extract(state, self.global_units, list(self.state)) if fits else state
            except (IndexError, RuntimeError):
                pass  # not a full-width model either: the check below names the first mismatch
        for key, t in self.state.items():
            if key not in state or tuple(state[key].shape) != tuple(t.shape):
                got = "missing" if key not in state else f"shape {tuple(state[key].shape)}"
                raise ValueError(
                    f"initial arrays do not fit the model at {key!r}: expected shape {tuple(t.shape)}, got {got}"
                    + (" (the global model is a slice of the full one: pass the full-width model's arrays, or the slice's)" if self.global_units is not None else "")
                )
        self.state = {k: torch.as_tensor(state[k]).to(self.state[k].dtype).clone() for k in self.state}

    def adopt(self, given: Mapping[str, torch.Tensor], handed: Mapping[str, torch.Tensor]) -> None:
        """Train from ``given`` instead of the evaluated model ``handed`` out: a Flower wrapper
        (server-side DP, say) may have changed it. Same keys and shapes: its change is applied to θ;
        otherwise ``given`` is a model to train from (``load_state``)."""
        if given.keys() == handed.keys() and all(torch.equal(given[k], t) for k, t in handed.items()):
            return
        if given.keys() != handed.keys() or any(given[k].shape != t.shape for k, t in handed.items()):
            self.load_state(given)
        else:
            self.load_state({k: t + (given[k] - handed[k]).to(t.dtype) if k in handed else t for k, t in self.state.items()})

    # -- checkpoint state ------------------------------------------------------------------
    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """What a resumed run needs: tensors (θ under ``THETA_PREFIX``, the per-coordinate train
        counts) and plain data (the planner's state). Node sampling and client seeds are functions of
        (seed, round), so no RNG state is saved."""
        theta = {THETA_PREFIX + k: v for k, v in self.state.items()}
        return theta | self.train_counts.state_dict(), {"planner_state": self.planner.state_dict()}

    def restore(self, completed_round: int, tensors: Mapping[str, torch.Tensor], extra: Mapping[str, Any]) -> None:
        """Continue after ``completed_round`` from what ``checkpoint_state`` saved."""
        self.load_state({k[len(THETA_PREFIX):]: v for k, v in tensors.items() if k.startswith(THETA_PREFIX)})
        self.train_counts.load_state_dict(tensors)
        self.planner.load_state_dict(extra["planner_state"])
        self.resumed_after = completed_round

    # -- the global model ------------------------------------------------------------------
    def global_model(self) -> nn.Module:
        """A real module holding the evaluated model: θ (at the small width for the ``small``
        planner), with the readers of each unit scaled by its expected inclusion where the planner
        says so (msfusion's ``inclusion-scaling``)."""
        return build_submodel(self.build, self.evaluated_state(), self.post_build, self.slicer.stacks)

    def evaluated_state(self) -> dict[str, torch.Tensor]:
        factors = self.planner.inclusion(self.last_plan) if self.last_plan is not None else None
        return self.state if factors is None else scale_inputs(self.state, self.slicer, factors)
