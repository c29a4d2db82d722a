"""The evaluated model's inclusion scaling: every weight that reads a unit, multiplied by a factor.

MSfusion evaluates the expectation of its sub-models: each unit's readers are scaled by the unit's
expected share of sub-models (dropout's weight-scaling rule).

Which dimension reads: torch's Linear and Conv weights are [out, in, ...], so a bound dimension
after the first of a tensor with two or more dimensions is an input (attention's output projection
[d_model, heads·head_dim] and an FFN's down projection [d_model, ffn] read on dimension 1 too).
Biases and norm parameters are one-dimensional and only ever write.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from msfusion_core.method.slicing import Slicer, element_indices


def scale_inputs(state: Mapping[str, torch.Tensor], slicer: Slicer, factors: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` in which every weight reading from unit u of group g is multiplied by
    ``factors[g][u]`` (the evaluated model under the inclusion scaling). A depth group's unit is a
    block, and what reads it is the residual stream: its branch outputs are multiplied instead, so
    the block adds ``factors[g][u]`` times its branch."""
    out = dict(state)
    for name, t in state.items():
        found = slicer.block_of(name)
        if found is not None and found[0] in factors and found[2] in slicer.stacks[found[0]].branch_outputs:
            share = float(factors[found[0]][found[1]])
            out[name] = t * share if share != 1.0 else t
    for name, bindings in slicer.bindings.items():
        t = out.get(name)
        if t is None or t.dim() < 2 or not t.is_floating_point():
            continue
        scaled = t
        for d, b in enumerate(bindings):
            if d == 0 or b is None or b.group not in factors:
                continue
            per_unit = torch.as_tensor(factors[b.group], dtype=t.dtype)
            # A unit may span several elements (a head's head_dim channels): each gets its unit's factor.
            per_element = torch.ones(t.shape[d], dtype=t.dtype)
            per_element[element_indices(b, torch.arange(per_unit.numel()))] = per_unit.repeat_interleave(b.block)
            shape = [1] * t.dim()
            shape[d] = t.shape[d]
            scaled = scaled * per_element.view(shape)
        if scaled is not t:
            out[name] = scaled
    return out
