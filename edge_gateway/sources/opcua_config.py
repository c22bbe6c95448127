"""Settings of an OPC UA source (``sources[]`` with ``type: opcua``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from edge_gateway.config_common import ALIAS_PATTERN, NAME_PATTERN, Model, Reconnecting, check_unique


class OpcUaNode(Model):
    alias: str = Field(pattern=ALIAS_PATTERN)
    node_id: str = Field(min_length=1, description='OPC UA NodeId string, e.g. "ns=2;s=Line1.Counter"')


class OpcUaSource(Reconnecting):
    type: Literal["opcua"]
    name: str = Field(pattern=NAME_PATTERN)
    endpoint: str = Field(pattern=r"^opc\.tcp://", description="opc.tcp://host:port[/path]")
    publishing_interval_ms: int = Field(default=500, ge=10, le=3_600_000)
    sampling_interval_ms: int = Field(default=0, ge=0, le=3_600_000)
    queue_size: int = Field(default=100, ge=1, le=10_000)
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    nodes: list[OpcUaNode] = Field(min_length=1)

    @field_validator("nodes")
    @classmethod
    def _unique_aliases(cls, nodes: list[OpcUaNode]) -> list[OpcUaNode]:
        check_unique([n.alias for n in nodes], "alias")
        return nodes
