"""What a loaded split is, with no data library behind it: the tensors, and the tokenizer setting's
form. A node that trains imports this; only loading data imports ``datasets``."""

from __future__ import annotations

import re
from typing import NamedTuple

import torch


class TensorData(NamedTuple):
    """A split (or partition) as tensors.

    ``x``: digits float32 ``[N, 1, 8, 8]`` in [0, 1] (pixel / 16); cifar10 uint8 ``[N, 3, 32, 32]``.
    ``y``: int64 ``[N]``.
    """

    x: torch.Tensor
    y: torch.Tensor


_BPE_SPEC = re.compile(r"^bpe-([1-9][0-9]*)$")


def check_tokenizer(spec: str) -> int | None:
    """``word`` (None) or ``bpe-<V>`` (V); ValueError otherwise."""
    if spec == "word":
        return None
    match = _BPE_SPEC.match(spec)
    if match is None or int(match.group(1)) < 260:
        raise ValueError(f"tokenizer must be 'word' or 'bpe-<vocabulary size >= 260>' (e.g. bpe-8192), got {spec!r}")
    return int(match.group(1))
