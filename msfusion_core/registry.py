"""The rule every registry of named specs keeps (datasets, model families): one name, one spec."""

from __future__ import annotations

from typing import Any, TypeVar

Spec = TypeVar("Spec")


def register(table: dict[str, Any], spec: Spec) -> Spec:
    """Add ``spec`` under its ``name``; a name registered twice is refused, naming the kind of spec
    (``DatasetSpec``: a dataset)."""
    if spec.name in table:
        kind = type(spec).__name__.removesuffix("Spec").lower()
        raise ValueError(f"{kind} {spec.name!r} is already registered")
    table[spec.name] = spec
    return spec
