"""The one rule for arrays that arrive: a participant's reply at the server, a sub-model at the
participant. Both sides hold the plan, so both know every shape to expect."""

from __future__ import annotations

from collections.abc import Mapping

import torch

# No sane training step produces parameters this large; one such reply would swamp the average.
MAX_ABS_VALUE = 1e6


def check_arrays(
    arrays: Mapping[str, object],
    expected: Mapping[str, tuple[int, ...]],
    what: str,
    dtypes: Mapping[str, torch.dtype] | None = None,
) -> None:
    """Raise ValueError naming the first array of ``arrays`` (``what``: "reply", "received") that
    is not what the plan implies: a missing or unexpected key, not a tensor, another shape or
    dtype, a non-finite value, or a value beyond ±MAX_ABS_VALUE."""
    missing = [k for k in expected if k not in arrays]
    extra = [k for k in arrays if k not in expected]
    if missing:
        raise ValueError(f"{what} misses {len(missing)} array(s), e.g. {missing[0]!r}")
    if extra:
        raise ValueError(f"{what} has {len(extra)} unexpected key(s), e.g. {extra[0]!r}")
    for key, shape in expected.items():
        t = arrays[key]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{what} {key!r} is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{what} {key!r} has shape {tuple(t.shape)}, the plan implies {tuple(shape)}")
        if dtypes is not None and t.dtype != dtypes[key]:
            raise ValueError(f"{what} {key!r} has dtype {t.dtype}, expected {dtypes[key]}")
        if t.is_floating_point() and t.numel():
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{what} {key!r} holds non-finite values")
            if float(t.abs().max()) > MAX_ABS_VALUE:
                raise ValueError(f"{what} {key!r} holds values beyond ±{MAX_ABS_VALUE:g}")
