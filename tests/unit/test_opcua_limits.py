"""Size bounds of the OPC UA source without a server: the value check (values.oversize), the settings'
ranges, and the receive limits an Acknowledge cannot raise (limits.py). The live checks are in
tests/integration/test_opcua_limits.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from asyncua import ua
from pydantic import ValidationError

from edge_gateway.sources.opcua.config import OpcUaSource
from edge_gateway.sources.opcua.limits import CHUNK_BYTES, Limits
from edge_gateway.sources.opcua.values import oversize

MIB = 1024 * 1024


class CountingList(list[int]):
    """A list that counts how many of its elements were looked at."""

    looked_at = 0

    def __iter__(self) -> Iterator[int]:
        for x in super().__iter__():
            self.looked_at += 1
            yield x


@dataclass
class Batch:
    name: str
    samples: list[float]


def test_values_within_the_limit_pass() -> None:
    for value in (None, True, 7, 2.5, "ok", b"\x00" * 1024, [1.0] * 100, ua.LocalizedText("x"), Batch("b", [1.0])):
        assert oversize(value, 1024) is None, value


def test_a_string_over_the_limit_is_refused_with_its_size_in_utf8_bytes() -> None:
    assert oversize("x" * (50 * MIB), MIB) == "value of 52,428,800 bytes exceeds max_value_bytes 1,048,576"
    assert oversize("é" * 600, 1024) == "value of 1,200 bytes exceeds max_value_bytes 1,024"  # 2 bytes each
    assert oversize("é" * 500, 1024) is None


def test_byte_strings_and_extension_object_bodies_count_their_bytes() -> None:
    assert oversize(b"\x01" * 2048, 1024) == "value of 2,048 bytes exceeds max_value_bytes 1,024"
    body = ua.ExtensionObject(TypeId=ua.NodeId(ua.Int32(1), ua.Int16(2)), Body=ua.ByteString(b"\x01" * 4096))
    assert oversize(body, 1024) == "value of more than 1,024 bytes exceeds max_value_bytes 1,024"
    assert oversize(Batch("b", [0.5] * 200), 1024) is not None  # a structure: the sum of its fields


def test_arrays_and_matrices_stop_counting_once_over_the_limit() -> None:
    big = CountingList([7] * 10_000_000)
    assert oversize(big, MIB) == "array of 10,000,000 elements (over 1,048,576 bytes) exceeds max_value_bytes 1,048,576"
    assert big.looked_at <= MIB // 8 + 1  # not 10 million
    matrix = ua.Variant(
        [[1.0] * 100 for _ in range(100)], ua.VariantType.Double, Dimensions=[ua.Int32(100), ua.Int32(100)]
    )
    assert oversize(matrix, 64 * 1024) == "value of more than 65,536 bytes exceeds max_value_bytes 65,536"
    assert oversize(["s" * 600, "t" * 600], 1024) is not None  # an array of strings: the strings' bytes


def doc(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "opcua",
        "name": "press",
        "endpoint": "opc.tcp://127.0.0.1:4840",
        "nodes": [{"alias": "a", "node_id": "ns=2;s=A"}],
    }
    return base | fields


def test_the_limits_have_defaults_and_ranges() -> None:
    source = OpcUaSource.model_validate(doc())
    assert (source.max_message_bytes, source.max_chunk_count, source.max_value_bytes) == (8 * MIB, 256, MIB)
    for field, value in (
        ("max_message_bytes", 65_535),
        ("max_message_bytes", 256 * MIB + 1),
        ("max_chunk_count", 0),
        ("max_chunk_count", 8193),
        ("max_value_bytes", 1023),
        ("max_value_bytes", 256 * MIB + 1),
    ):
        with pytest.raises(ValidationError) as info:
            OpcUaSource.model_validate(doc(**{field: value}))
        assert field in str(info.value)


def test_an_acknowledge_can_lower_what_we_send_but_not_raise_what_we_accept() -> None:
    limits = Limits(8 * MIB, 256).transport()
    unlimited = ua.Acknowledge(
        ReceiveBufferSize=ua.UInt32(2**31 - 1),
        SendBufferSize=ua.UInt32(2**31 - 1),
        MaxMessageSize=ua.UInt32(0),
        MaxChunkCount=ua.UInt32(0),
    )
    limits.update_client_limits(unlimited)
    assert (limits.max_recv_buffer, limits.max_send_buffer) == (CHUNK_BYTES, CHUNK_BYTES)
    assert (limits.max_message_size, limits.max_chunk_count) == (8 * MIB, 256)
    limits.update_client_limits(ua.Acknowledge(ReceiveBufferSize=ua.UInt32(8192)))
    assert (limits.max_recv_buffer, limits.max_send_buffer) == (CHUNK_BYTES, 8192)
