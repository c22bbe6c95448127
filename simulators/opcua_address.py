"""The OPC UA simulator's address space: namespace, tags and their types, node ids, the bulk and huge
variables and the values bulk variables take (simulators/opcua_plc.py documents the address space).

Tests import these to name nodes without starting a server; everything here is pure data and arithmetic.
Invariant: the namespace is always index 2 (``NAMESPACE_INDEX``): the server refuses to start otherwise.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from asyncua import ua

NAMESPACE = "urn:edge-gateway:sim:opcua"
NAMESPACE_INDEX = 2

TAGS: dict[str, ua.VariantType] = {
    "Counter": ua.VariantType.UInt32,
    "Temperature": ua.VariantType.Double,
    "Pressure": ua.VariantType.Float,
    "Speed": ua.VariantType.Int32,
    "Running": ua.VariantType.Boolean,
    "State": ua.VariantType.String,
    "Level": ua.VariantType.Double,
    "Setpoints": ua.VariantType.Double,  # an array
    "BatchStart": ua.VariantType.DateTime,
}
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
INITIAL: dict[str, Any] = {
    "Counter": 0,
    "Temperature": 0.0,
    "Pressure": 0.0,
    "Speed": 0,
    "Running": False,
    "State": "",
    "Level": 0.0,
    "Setpoints": [0.0, 0.0, 0.0],
    "BatchStart": EPOCH,
}
BULK_TYPES: tuple[ua.VariantType, ...] = (
    ua.VariantType.Boolean,
    ua.VariantType.Int32,
    ua.VariantType.UInt32,
    ua.VariantType.Double,
    ua.VariantType.String,
    ua.VariantType.Double,  # an array of 2
)
BULK_PER_FOLDER = 50
HUGE: dict[str, tuple[ua.VariantType, Callable[[], object]]] = {
    "String": (ua.VariantType.String, lambda: "x" * (50 * 1024 * 1024)),
    "Array": (ua.VariantType.Int32, lambda: [7] * 10_000_000),
    "Medium": (ua.VariantType.String, lambda: "m" * (2 * 1024 * 1024)),
    "MediumArray": (ua.VariantType.Double, lambda: [0.5] * 300_000),
}


def node_id(tag: str) -> str:
    return f"ns={NAMESPACE_INDEX};s=Line1.{tag}"


def huge_node_id(name: str) -> str:
    return f"ns={NAMESPACE_INDEX};s=Huge.{name}"


def bulk_node_id(i: int) -> str:
    return f"ns={NAMESPACE_INDEX};s=Bulk.{i:05d}"


def bulk_value(i: int, step: int) -> bool | int | float | str | list[float]:
    """The value bulk variable ``i`` holds after ``step`` changes (0 = initial)."""
    kind = i % len(BULK_TYPES)
    return (
        step % 2 == 1,
        step - 1000,
        step,
        step + i / 1000,
        f"s{step}",
        [float(step), float(i)],
    )[kind]
