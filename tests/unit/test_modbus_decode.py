"""Register decoding and read planning, table-driven and against simple models.

Complements test_modbus_codec.py: every type x word order x edge value with registers built from
``struct`` alone (not from the codec's own ``encode``), the exact 125-register boundary, a Hypothesis
check of the planner against a brute-force optimal grouping, and the request splitting the reader
uses after an "illegal data address" answer.
"""

from __future__ import annotations

import itertools
import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_gateway.sources.modbus.codec import MAX_REGISTERS, ReadRequest, decode, plan_reads, request_for, split_request
from edge_gateway.sources.modbus.config import ModbusPoint

FORMATS = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}
EDGE_VALUES: dict[str, list[Any]] = {
    "int16": [0, 1, -1, 215, -32768, 32767],
    "uint16": [0, 1, 1450, 65535],
    "int32": [0, 1, -1, -5000, 65536, -(2**31), 2**31 - 1],
    "uint32": [0, 1, 65535, 65536, 123_456_789, 2**32 - 1],
    "float32": [0.0, -0.0, 1.5, -1.25, 6.0, 3.4028234663852886e38, 1.401298464324817e-45, math.inf, -math.inf],
}


def pt(address: int, data_type: str = "uint16", table: str = "holding", **kw: Any) -> ModbusPoint:
    fields = {"alias": f"{table}.p{address}", "table": table, "address": address, "data_type": data_type}
    return ModbusPoint.model_validate(fields | kw)


def registers_of(data_type: str, value: float, word_order: str) -> list[int]:
    """Big-endian bytes within each register; for 32-bit types ``little`` puts the low word first."""
    raw = struct.pack(FORMATS[data_type], value)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return words[::-1] if word_order == "little" else words


CASES = [
    pytest.param(data_type, order, value, id=f"{data_type}-{order}-{value!r}")
    for data_type, values in EDGE_VALUES.items()
    for order in ("big", "little")
    for value in values
]


@pytest.mark.parametrize(("data_type", "order", "value"), CASES)
def test_every_type_and_word_order_decodes_what_struct_encoded(data_type: str, order: str, value: float) -> None:
    point = pt(0, data_type, word_order=order)
    decoded = decode(point, registers_of(data_type, value, order))
    assert decoded == value
    assert type(decoded) is type(value)
    if data_type == "float32":
        assert math.copysign(1, decoded) == math.copysign(1, value)  # -0.0 keeps its sign


def test_word_order_is_visible_in_the_registers_and_ignored_for_16_bit_types() -> None:
    assert registers_of("uint32", 0x0001_0002, "big") == [0x0001, 0x0002]
    assert registers_of("uint32", 0x0001_0002, "little") == [0x0002, 0x0001]
    assert decode(pt(0, "uint32", word_order="little"), [0x0001, 0x0002]) == 0x0002_0001
    assert decode(pt(0, "int16", word_order="little"), [0xFF38]) == -200


def test_float32_nan_decodes_to_nan() -> None:
    value = decode(pt(0, "float32"), [0x7FC0, 0x0000])
    assert isinstance(value, float)
    assert math.isnan(value)


@pytest.mark.parametrize(
    ("data_type", "registers", "scale", "offset", "expected"),
    [
        ("int16", [215], 0.1, 0.0, 21.5),
        ("int16", [0xFF38], 0.1, 0.0, -20.0),
        ("uint16", [1000], 0.001, -0.5, 0.5),
        ("uint16", [5], 1.0, 10.0, 15.0),  # an offset alone already makes it a float
        ("uint16", [5], -2.0, 0.0, -10.0),
        ("uint32", [0x0001, 0x0000], 0.5, 0.0, 32768.0),
        ("float32", registers_of("float32", 2.5, "big"), 4.0, 1.0, 11.0),
    ],
)
def test_scale_and_offset_give_float_engineering_units(
    data_type: str, registers: list[int], scale: float, offset: float, expected: float
) -> None:
    value = decode(pt(0, data_type, scale=scale, offset=offset), registers)
    assert isinstance(value, float)
    assert value == pytest.approx(expected)


@pytest.mark.parametrize("data_type", ["int16", "uint16", "int32", "uint32"])
def test_integers_stay_int_without_scale_or_offset(data_type: str) -> None:
    value = decode(pt(0, data_type), registers_of(data_type, 7, "big"))
    assert value == 7
    assert type(value) is int


def spans(requests: list[ReadRequest]) -> list[tuple[str, int, int]]:
    return [(r.table, r.start, r.count) for r in requests]


def test_no_points_no_reads() -> None:
    assert plan_reads([]) == []


def test_125_contiguous_registers_are_one_read_and_126_are_two() -> None:
    assert spans(plan_reads([pt(a) for a in range(125)], max_gap=0)) == [("holding", 0, 125)]
    assert spans(plan_reads([pt(a) for a in range(126)], max_gap=0)) == [("holding", 0, 125), ("holding", 125, 1)]


def test_a_32_bit_value_is_never_cut_at_the_125_register_limit() -> None:
    points = [*(pt(a) for a in range(124)), pt(124, "uint32")]  # the uint32 would need registers 124..125
    reqs = plan_reads(points, max_gap=0)
    assert spans(reqs) == [("holding", 0, 124), ("holding", 124, 2)]
    assert reqs[1].points == (points[-1],)


def test_tables_are_never_merged_even_at_the_same_addresses() -> None:
    points = [pt(0, table="input"), pt(0), pt(1, table="input"), pt(1)]
    reqs = plan_reads(points)
    assert spans(reqs) == [("holding", 0, 2), ("input", 0, 2)]
    assert all({p.table for p in r.points} == {r.table} for r in reqs)


def test_gaps_are_bridged_only_up_to_max_gap() -> None:
    points = [pt(0), pt(3), pt(20)]
    assert spans(plan_reads(points, max_gap=0)) == [("holding", 0, 1), ("holding", 3, 1), ("holding", 20, 1)]
    assert spans(plan_reads(points, max_gap=2)) == [("holding", 0, 4), ("holding", 20, 1)]
    assert spans(plan_reads(points, max_gap=16)) == [("holding", 0, 21)]


def test_points_given_in_any_order_are_planned_in_address_order() -> None:
    points = [pt(7), pt(2, "float32"), pt(0, "int32"), pt(4)]
    (req,) = plan_reads(points, max_gap=2)
    assert (req.start, req.count) == (0, 8)
    assert [p.address for p in req.points] == [0, 2, 4, 7]


def optimal_read_count(points: list[ModbusPoint], max_gap: int) -> int:
    """Brute force: the fewest reads that cover all points, each read a run of address-sorted points of
    one table whose span fits in 125 registers and whose holes are at most ``max_gap`` registers."""
    total = 0
    for table in {p.table for p in points}:
        group = sorted((p for p in points if p.table == table), key=lambda p: p.address)
        best = [0] + [len(group)] * len(group)  # best[i]: fewest reads for group[:i]
        for end in range(1, len(group) + 1):
            for start in range(end):
                run = group[start:end]
                first, last = run[0].address, max(p.address + p.register_count - 1 for p in run)
                reach, holes_ok = run[0].address + run[0].register_count - 1, True
                for p in run[1:]:
                    holes_ok = holes_ok and p.address - reach - 1 <= max_gap
                    reach = max(reach, p.address + p.register_count - 1)
                if holes_ok and last - first + 1 <= MAX_REGISTERS:
                    best[end] = min(best[end], best[start] + 1)
        total += best[len(group)]
    return total


point_strategy = st.builds(
    lambda table, address, data_type: pt(address, data_type, table),
    st.sampled_from(["holding", "input"]),
    st.integers(0, 400),
    st.sampled_from(list(FORMATS)),
)


@given(st.lists(point_strategy, max_size=25, unique_by=lambda p: p.alias), st.sampled_from([0, 1, 8, 40]))
def test_planner_is_minimal_and_covers_every_point_once(points: list[ModbusPoint], max_gap: int) -> None:
    reqs = plan_reads(points, max_gap=max_gap)
    assert len(reqs) == optimal_read_count(points, max_gap)
    assert sorted(p.alias for r in reqs for p in r.points) == sorted(p.alias for p in points)
    for r in reqs:
        assert 1 <= r.count <= MAX_REGISTERS
        for p in r.points:
            assert p.table == r.table
            assert r.start <= p.address
            assert p.address + p.register_count - 1 <= r.end
    for a, b in itertools.pairwise(reqs):  # ordered by table then address, never overlapping
        assert (a.table, a.start) < (b.table, b.start)
        assert a.table != b.table or a.end < b.start


def test_split_request_halves_by_address_down_to_single_points() -> None:
    (req,) = plan_reads([pt(0, "uint32"), pt(2), pt(3), pt(9, "float32"), pt(12)], max_gap=8)
    first, second = split_request(req)
    assert (first.start, first.count, [p.address for p in first.points]) == (0, 3, [0, 2])
    assert (second.start, second.count, [p.address for p in second.points]) == (3, 10, [3, 9, 12])
    single = request_for("holding", [pt(9, "float32")])
    assert split_request(single) == [single]
    assert (single.start, single.count, single.end) == (9, 2, 10)
