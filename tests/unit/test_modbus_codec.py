"""Register decoding for every type and word order, and the read planner."""

from __future__ import annotations

import struct

import pytest

from edge_gateway.sources.modbus.codec import MAX_REGISTERS, decode, encode, plan_reads
from edge_gateway.sources.modbus.config import ModbusPoint


def pt(address: int, data_type: str = "uint16", **kw: object) -> ModbusPoint:
    return ModbusPoint.model_validate({"alias": f"p{address}", "address": address, "data_type": data_type} | kw)


@pytest.mark.parametrize(
    ("data_type", "order", "registers", "expected"),
    [
        ("uint16", "big", [0xFFFF], 65535),
        ("int16", "big", [0xFFFF], -1),
        ("int16", "big", [0x8000], -32768),
        ("uint32", "big", [0x0001, 0x0002], 0x00010002),
        ("uint32", "little", [0x0002, 0x0001], 0x00010002),
        ("int32", "big", [0xFFFF, 0xFFFE], -2),
        ("int32", "little", [0xFFFE, 0xFFFF], -2),
        ("float32", "big", list(struct.unpack(">HH", struct.pack(">f", 3.5))), 3.5),
        ("float32", "little", list(struct.unpack(">HH", struct.pack(">f", -1.25)))[::-1], -1.25),
    ],
)
def test_decode_every_type_and_word_order(data_type: str, order: str, registers: list[int], expected: float) -> None:
    p = pt(0, data_type, word_order=order)
    value = decode(p, registers)
    assert value == expected
    assert type(value) is type(expected)
    assert encode(p, expected) == registers


def test_scale_and_offset_give_engineering_units() -> None:
    assert decode(pt(0, "int16", scale=0.1), [215]) == pytest.approx(21.5)
    assert decode(pt(0, "int16", scale=0.1), [0xFFF6]) == pytest.approx(-1.0)
    assert decode(pt(0, "uint16", scale=2, offset=-10), [5]) == 0


def test_short_register_list_is_an_error_not_a_wrong_value() -> None:
    with pytest.raises(ValueError, match="need 2 register"):
        decode(pt(0, "uint32"), [1])


def test_planner_coalesces_near_points_and_splits_far_ones_and_tables() -> None:
    points = [pt(0, "uint32"), pt(2, "int16"), pt(5), pt(40), pt(3, table="input"), pt(0, table="input")]
    reqs = plan_reads(points, max_gap=8)
    assert [(r.table, r.start, r.count) for r in reqs] == [("holding", 0, 6), ("holding", 40, 1), ("input", 0, 4)]
    assert [p.address for p in reqs[0].points] == [0, 2, 5]


def test_planner_respects_the_125_register_limit() -> None:
    points = [pt(a) for a in range(0, 300, 2)]
    reqs = plan_reads(points, max_gap=8)
    assert all(r.count <= MAX_REGISTERS for r in reqs)
    assert sum(len(r.points) for r in reqs) == len(points)
    assert len(reqs) == 3  # 300 registers / 125 per read, rounded up


def test_overlapping_points_share_a_read() -> None:
    reqs = plan_reads([pt(10, "uint32"), pt(11)], max_gap=0)
    assert [(r.start, r.count) for r in reqs] == [(10, 2)]
