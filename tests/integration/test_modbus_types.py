"""Every supported type, byte order and word order, read from the simulator in a separate process.

The simulator lays each value into its registers with its own encoder (simulators/modbus_values.py:
bytes first, then byte swap, then register order) and the reader decodes them with the gateway's codec;
each case must come back as the value written. One reader polls all cases (coalesced into a few reads).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from edge_gateway.model import Quality
from edge_gateway.sources.modbus.config import ModbusSource
from edge_gateway.sources.modbus.reader import ModbusReader
from simulators.modbus_process import ModbusSimProcess
from tests.support import Collected, Starter, until

ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]
VALUES: dict[str, list[Any]] = {
    "int16": [-32768, 12345],
    "uint16": [65535, 1450],
    "int32": [-(2**31), 123_456_789],
    "uint32": [2**32 - 1, 65536],
    "int64": [-(2**63), 1_234_567_890_123],
    "uint64": [2**64 - 1, 2**40 + 3],
    "float32": [-1.25, 3.4028234663852886e38],
    "float64": [1 / 3, -1e300, math.inf],
    "bcd16": [9999, 1234],
    "bcd32": [99_999_999, 12_345_678],
}
WIDTH = {"int16": 1, "uint16": 1, "bcd16": 1, "int32": 2, "uint32": 2, "float32": 2, "bcd32": 2}


def cases() -> Iterator[dict[str, Any]]:
    """Point settings plus the value the simulator writes (``expected`` when decoding changes it)."""
    address = {"holding": 20, "input": 20}
    n = 0

    def place(table: str, width: int) -> int:
        at = address[table]
        address[table] += width + 1  # a one-register hole between values: the planner bridges it
        return at

    for data_type, values in VALUES.items():
        for byte_order, word_order in ORDERS:
            for value in values:
                n += 1
                table = "holding" if n % 2 else "input"
                yield {
                    "alias": f"{data_type}.{byte_order}.{word_order}.{n}",
                    "table": table,
                    "address": place(table, WIDTH.get(data_type, 4)),
                    "data_type": data_type,
                    "byte_order": byte_order,
                    "word_order": word_order,
                    "value": value,
                }
    for byte_order in ("big", "little"):
        for text, length in (("PUMP-01", 4), ("AB", 1), ("Kühler 3", 5)):
            yield {
                "alias": f"string.{byte_order}.{length}",
                "table": "holding",
                "address": place("holding", length),
                "data_type": "string",
                "length": length,
                "byte_order": byte_order,
                "value": text,
            }
    status_word = place("holding", 1)
    for bit, value in ((0, True), (1, False), (7, True), (8, True), (14, False), (15, True)):
        yield {"alias": f"bit.{bit}", "address": status_word, "data_type": "bool", "bit": bit, "value": value}
    for table, addr, value in (("coil", 1, True), ("coil", 2, False), ("coil", 1999, True)):
        yield {"alias": f"{table}.{addr}", "table": table, "address": addr, "value": value}
    for addr, value in ((5, True), (3000, True), (3001, False)):
        yield {"alias": f"discrete.{addr}", "table": "discrete_input", "address": addr, "value": value}
    yield {
        "alias": "scaled.int16",
        "address": place("holding", 1),
        "data_type": "int16",
        "scale": 0.1,
        "offset": 273.15,
        "value": -200,
        "expected": pytest.approx(253.15),
    }
    yield {
        "alias": "scaled.bcd32",
        "address": place("holding", 2),
        "data_type": "bcd32",
        "word_order": "little",
        "scale": 0.01,
        "value": 12_345_678,
        "expected": pytest.approx(123_456.78),
    }


CASES = list(cases())


async def test_every_type_and_order_decodes_to_the_value_the_simulator_wrote(start_task: Starter) -> None:
    with ModbusSimProcess(registers=600) as sim:
        for case in CASES:
            fields = {
                k: case[k] for k in ("table", "address", "byte_order", "word_order", "length", "bit") if k in case
            }
            sim.command("set_value", data_type=case.get("data_type", "bool"), value=case["value"], **fields)
        points = [{k: v for k, v in case.items() if k not in ("value", "expected")} for case in CASES]
        config = ModbusSource.model_validate(
            {"type": "modbus", "name": "types", "host": "127.0.0.1", "port": sim.port, "points": points}
            | {"poll_interval_ms": 60_000, "timeout_s": 2.0, "max_gap_registers": 1}  # one poll
        )
        reader = ModbusReader(config)
        sink = Collected()
        start_task(reader.run(sink))
        await until(lambda: sink.polls)
        got = {r.point: r for r in sink.polls[0]}
        wrong = {}
        for case in CASES:
            reading = got[case["alias"]]
            expected = case.get("expected", case["value"])
            if reading.quality is not Quality.GOOD or reading.value != expected:
                wrong[case["alias"]] = (reading.value, reading.status, "expected", case["value"])
            elif isinstance(case["value"], int) and "scale" not in case:
                assert type(reading.value) is type(case["value"]), case["alias"]  # ints stay int, bools bool
        assert wrong == {}
        # The cases span 4 tables in a few coalesced reads, never one request per point.
        requests = sim.requests()
        assert len(requests) == len(reader.requests) < len(CASES) / 10
        assert {fc for _, fc, _, _ in requests} == {1, 2, 3, 4}
