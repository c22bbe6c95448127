"""Modbus settings: the flat form stays valid, the new fields are checked with messages naming the field,
and the codec's newer types (64-bit, byte order, BCD, strings, bits of a register)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from edge_gateway.sources.modbus.codec import decode, encode, plan_reads
from edge_gateway.sources.modbus.config import ModbusPoint, ModbusSource, ModbusTcpSource

FLAT: dict[str, Any] = {
    "type": "modbus",
    "name": "boiler",
    "host": "127.0.0.1",
    "port": 5020,
    "unit_id": 3,
    "poll_interval_ms": 250,
    "points": [{"alias": "a", "address": 0}, {"alias": "b", "address": 1, "data_type": "int32"}],
}


def source(**changes: Any) -> ModbusSource:
    return ModbusSource.model_validate(FLAT | changes)


def error_of(**changes: Any) -> str:
    with pytest.raises(ValidationError) as info:
        source(**changes)
    return str(info.value)


def test_the_flat_form_is_one_device_in_the_default_group() -> None:
    s = source()
    assert ModbusTcpSource is ModbusSource
    (device,) = s.device_list
    assert (device.name, device.unit_id, [p.alias for p in device.points]) == ("boiler", 3, ["a", "b"])
    assert s.interval_ms("default") == 250
    assert s.transport == "tcp"
    assert s.endpoint == "127.0.0.1:5020"


def test_devices_and_poll_groups() -> None:
    flat_only = ("unit_id", "points")
    s = ModbusSource.model_validate(
        {k: v for k, v in FLAT.items() if k not in flat_only}
        | {
            "poll_groups": [{"name": "fast", "interval_ms": 100}],
            "devices": [
                {"name": "m1", "unit_id": 1, "points": [{"alias": "m1.v", "address": 0, "group": "fast"}]},
                {"name": "m2", "unit_id": 2, "points": [{"alias": "m2.v", "address": 0}]},
            ],
        }
    )
    assert [d.unit_id for d in s.device_list] == [1, 2]
    assert s.interval_ms("fast") == 100
    assert s.interval_ms("default") == 250


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"points": [{"alias": "x", "address": 0, "data_type": "bool"}]}, "bit: required for a bool point"),
        ({"points": [{"alias": "x", "address": 0, "bit": 3}]}, "bit: only for data_type bool"),
        ({"points": [{"alias": "x", "table": "coil", "address": 0, "data_type": "int16"}]}, "data_type: table coil"),
        ({"points": [{"alias": "x", "address": 0, "data_type": "string"}]}, "length: required for data_type string"),
        ({"points": [{"alias": "x", "address": 0, "length": 2}]}, "length: only for data_type string"),
        ({"points": [{"alias": "x", "address": 0, "data_type": "string", "length": 2, "scale": 2}]}, "scale:"),
        ({"points": [{"alias": "x", "address": 65534, "data_type": "float64"}]}, "address: float64 at 65534"),
        ({"points": [{"alias": "x", "address": 0, "group": "fast"}]}, "group: point x names poll group 'fast'"),
        ({"points": [{"alias": "x", "address": 0}, {"alias": "x", "address": 1}]}, "duplicate alias(s): x"),
        ({"transport": "rtu"}, "serial: required with transport rtu"),
        ({"transport": "rtu", "host": None, "serial": {"port": "/dev/ttyS0"}, "unit_id": 0}, "unit_id: 0 of device"),
        ({"serial": {"port": "/dev/ttyS0"}}, "serial: only with transport rtu"),
        ({"host": None}, "host: required with transport tcp"),
        ({"transport": "rtu_over_tcp", "max_outstanding": 2}, "max_outstanding: a serial gateway"),
        ({"devices": [{"name": "d", "unit_id": 1, "points": [{"alias": "y", "address": 0}]}]}, "devices: give either"),
        ({"points": []}, "points: at least one point is required"),
        ({"poll_groups": [{"name": "default", "interval_ms": 100}]}, "poll_groups: 'default' is the group"),
        ({"device_backoff_min_s": 5, "device_backoff_max_s": 1}, "device_backoff_min_s (5.0) must not exceed"),
        ({"max_read_registers": 126}, "max_read_registers"),
        ({"serial": {"port": "/dev/ttyS0", "parity": "X"}, "transport": "rtu", "host": None}, "serial.parity"),
    ],
)
def test_bad_settings_name_their_field(changes: dict[str, Any], message: str) -> None:
    assert message in error_of(**changes)


def test_bit_tables_default_to_bool_and_plan_in_bits() -> None:
    coils = [ModbusPoint(alias=f"c{a}", table="coil", address=a) for a in (0, 1, 70, 1999, 2000)]
    assert all(p.data_type == "bool" for p in coils)
    reqs = plan_reads(coils, max_gap_bits=64)
    assert [(r.table, r.start, r.count) for r in reqs] == [("coil", 0, 2), ("coil", 70, 1), ("coil", 1999, 2)]
    assert [(r.start, r.count) for r in plan_reads(coils, max_gap_bits=2000)] == [(0, 2000), (2000, 1)]


def pt(data_type: str, **kw: Any) -> ModbusPoint:
    return ModbusPoint.model_validate({"alias": "p", "address": 0, "data_type": data_type} | kw)


@pytest.mark.parametrize(
    ("byte_order", "word_order", "registers"),
    [
        ("big", "big", [0xAABB, 0xCCDD]),
        ("big", "little", [0xCCDD, 0xAABB]),
        ("little", "big", [0xBBAA, 0xDDCC]),
        ("little", "little", [0xDDCC, 0xBBAA]),
    ],
)
def test_the_four_32_bit_layouts(byte_order: str, word_order: str, registers: list[int]) -> None:
    point = pt("uint32", byte_order=byte_order, word_order=word_order)
    assert decode(point, registers) == 0xAABBCCDD
    assert encode(point, 0xAABBCCDD) == registers


def test_64_bit_types() -> None:
    assert decode(pt("uint64"), [0x0102, 0x0304, 0x0506, 0x0708]) == 0x0102030405060708
    assert decode(pt("int64", word_order="little"), [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF]) == -2
    assert decode(pt("float64"), encode(pt("float64"), -0.1)) == -0.1


def test_bcd_strings_and_bits() -> None:
    assert decode(pt("bcd16"), [0x1234]) == 1234
    assert decode(pt("bcd32", word_order="little"), [0x5678, 0x1234]) == 12345678
    with pytest.raises(ValueError, match=r"0x12a4 is not BCD"):
        decode(pt("bcd16"), [0x12A4])
    assert decode(pt("string", length=3), [0x4142, 0x4300, 0x0000]) == "ABC"
    assert decode(pt("string", length=2, byte_order="little"), [0x4241, 0x2044]) == "ABD"
    assert decode(pt("bool", bit=15), [0x8000]) is True
    assert decode(pt("bool", bit=0), [0x8000]) is False
    assert decode(pt("bool", bit=0, byte_order="little"), [0x0100]) is True
