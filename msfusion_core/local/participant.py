"""A participant's side of a round with no FL framework: check what arrived, build the real
sub-model, train it (§4) and return only its parameters. The Flower ClientApp wraps this."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from msfusion_core.data.tensors import TensorData
from msfusion_core.method.checks import check_arrays
from msfusion_core.method.planner import ParticipantPlan
from msfusion_core.method.slicing import Slicer, map_previous
from msfusion_core.method.split_map import SplitMap, group_sizes, model_shapes, model_state
from msfusion_core.method.submodel import build_submodel
from msfusion_core.local.measure import num_bytes
from msfusion_core.local.training import TrainConfig, TrainResult, train_submodel


@dataclass(frozen=True)
class LocalUpdate:
    state: dict[str, torch.Tensor]  # trained parameters only, under the sub-model's keys
    result: TrainResult
    bytes_down: int
    bytes_up: int


@dataclass(frozen=True)
class PreviousSubmodel:
    """What a participant keeps between rounds for the contrastive negative."""

    state: dict[str, torch.Tensor]
    units: dict[str, np.ndarray]


class Participant:
    """Everything a participant needs to know about the model family, computed once per process."""

    def __init__(
        self,
        build: Callable[[], nn.Module],
        split_map: SplitMap,
        representation_layer: str,
        local_keys: Collection[str] = (),
        post_build: Callable[[nn.Module], None] | None = None,
    ) -> None:
        """``local_keys``: frozen tensors this participant builds itself (never received nor sent).
        ``post_build``: the family's sub-model hook (``ModelFamily.post_build``).

        Raises ValueError, here rather than in every round, when ``representation_layer`` is not a
        module of the model or the split map does not fit it."""
        with torch.device("meta"):
            template = build()
        try:
            template.get_submodule(representation_layer)
        except AttributeError as exc:
            layers = [n for n, _ in template.named_children()]
            raise ValueError(
                f"representation_layer {representation_layer!r} is not a module of {type(template).__name__} "
                f"(its top-level modules: {', '.join(layers)}); name the layer whose input is the representation"
            ) from exc
        self.build = build
        self.post_build = post_build
        self.split_map = split_map
        self.representation_layer = representation_layer
        self.slicer = Slicer(split_map)
        self.local_keys = frozenset(local_keys)
        shapes = model_shapes(template)
        self.group_sizes = group_sizes(shapes, split_map)
        self.full_shapes = {k: v for k, v in shapes.items() if k not in self.local_keys}
        self._local_state: dict[str, torch.Tensor] | None = None

    def local_state(self) -> dict[str, torch.Tensor]:
        """The local tensors, from one real build (e.g. the pretrained embeddings in the package)."""
        if self._local_state is None:
            state = model_state(self.build()) if self.local_keys else {}
            self._local_state = {k: state[k] for k in self.local_keys}
        return self._local_state

    def model(self, received: Mapping[str, torch.Tensor]) -> nn.Module:
        """The real sub-model for ``received`` arrays (plus the local tensors)."""
        return build_submodel(self.build, {**received, **self.local_state()}, self.post_build, self.slicer.stacks)

    def read_plan(self, compact: Mapping) -> ParticipantPlan:
        return ParticipantPlan.from_compact(compact, self.group_sizes)

    def check_received(self, plan: ParticipantPlan, received: Mapping[str, torch.Tensor]) -> None:
        """Raise ValueError naming the first tensor that is not what ``plan`` implies."""
        units = plan.unit_indices()
        held = self.slicer.held(self.full_shapes, units)
        expected = {local: self.slicer.sub_shape(key, self.full_shapes[key], units) for key, local in held.items()}
        check_arrays(received, expected, "received")

    def train(
        self,
        plan: ParticipantPlan,
        received: Mapping[str, torch.Tensor],
        data: TensorData,
        cfg: TrainConfig,
        *,
        previous: PreviousSubmodel | None = None,
        seed: int = 0,
        round_index: int = 0,
    ) -> tuple[LocalUpdate, PreviousSubmodel]:
        """One local round (``round_index``: server round − 1). Returns the reply and what to keep
        for the next round's negative."""
        self.check_received(plan, received)
        units = plan.unit_indices()
        model = self.model(received)
        global_model = prev_model = None
        if cfg.mu > 0:
            global_model = self.model(received)
            if previous is not None:
                mapped = map_previous(self.slicer, previous.state, previous.units, received, units)
                prev_model = self.model(mapped)
        result = train_submodel(
            model,
            data,
            cfg,
            representation_layer=self.representation_layer,
            global_model=global_model,
            prev_model=prev_model,
            seed=seed,
            round_index=round_index,
        )
        model.cpu()  # trained wherever cfg.device said; the reply and what is kept live on the CPU
        reply = {k: p.detach().clone() for k, p in model.named_parameters() if k not in self.local_keys}
        down, up = num_bytes(received), num_bytes(reply)
        keep = PreviousSubmodel({k: v.clone() for k, v in model_state(model).items() if k not in self.local_keys}, units)
        return LocalUpdate(reply, result, down, up), keep
