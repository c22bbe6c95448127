"""Settings of a Modbus source (``sources[]`` with ``type: modbus``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from edge_gateway.config_common import ALIAS_PATTERN, NAME_PATTERN, Model, Reconnecting, check_unique

ModbusDataType = Literal["int16", "uint16", "int32", "uint32", "float32"]


class ModbusPoint(Model):
    alias: str = Field(pattern=ALIAS_PATTERN)
    table: Literal["holding", "input"] = "holding"
    address: int = Field(ge=0, le=65535, description="0-based register address (PDU address)")
    data_type: ModbusDataType = "uint16"
    # Word order for 32-bit types: "big" = high word first (Modbus convention), "little" = low word first.
    word_order: Literal["big", "little"] = "big"
    scale: float = 1.0
    offset: float = 0.0

    @property
    def register_count(self) -> int:
        return 1 if self.data_type in ("int16", "uint16") else 2


class ModbusTcpSource(Reconnecting):
    type: Literal["modbus"]
    name: str = Field(pattern=NAME_PATTERN)
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    poll_interval_ms: int = Field(default=1000, ge=10, le=3_600_000)
    timeout_s: float = Field(default=2.0, gt=0, le=60)
    points: list[ModbusPoint] = Field(min_length=1)

    @field_validator("points")
    @classmethod
    def _unique_aliases(cls, points: list[ModbusPoint]) -> list[ModbusPoint]:
        check_unique([p.alias for p in points], "alias")
        return points
