"""From the config to the stages: which class reads a source ``type``, which buffer and which transport run.

``SOURCE_TYPES`` is the registry from a source's config class to its reader (a plain dict, as Telegraf's
plugin registry). ``make_transport`` picks the gateway's own MQTT connection or the Greengrass nucleus' IPC;
``make_buffer`` the disk buffer or the memory one. Nothing here starts anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from edge_gateway.buffer.base import Buffer
from edge_gateway.buffer.disk import DiskBuffer
from edge_gateway.buffer.memory import MemoryBuffer
from edge_gateway.config.model import GatewayConfig, SourceConfig
from edge_gateway.publish.transport.base import Transport
from edge_gateway.publish.transport.mqtt import MqttTransport
from edge_gateway.sources.base import Source
from edge_gateway.sources.modbus.config import ModbusTcpSource
from edge_gateway.sources.modbus.reader import ModbusReader
from edge_gateway.sources.opcua.config import OpcUaSource
from edge_gateway.sources.opcua.reader import OpcUaReader

SOURCE_TYPES: dict[type[SourceConfig], Callable[[Any], Source]] = {
    OpcUaSource: OpcUaReader,
    ModbusTcpSource: ModbusReader,
}


def make_source(config: SourceConfig) -> Source:
    return SOURCE_TYPES[type(config)](config)


def make_transport(config: GatewayConfig, will: tuple[str, bytes]) -> Transport:
    """The gateway's own MQTT connection (with ``will`` as its Last Will), or the Greengrass nucleus' IPC
    (``publisher.mqtt.mode: greengrass_ipc``: no Last Will exists there)."""
    mqtt = config.publisher.mqtt
    if not mqtt.ipc:
        return MqttTransport(mqtt, config.client_id, will=will)
    from edge_gateway.config import greengrass  # noqa: PLC0415 - only in IPC mode
    from edge_gateway.publish.transport.greengrass_ipc import GreengrassIpcTransport  # noqa: PLC0415

    socket_path, token = greengrass.ipc_environment(os.environ)
    return GreengrassIpcTransport(mqtt, config.gateway.thing_name, socket_path=socket_path, token=token)


def make_buffer(config: GatewayConfig) -> Buffer:
    b = config.buffer
    destinations = [d.name for d in config.publisher.destinations]
    if b.type == "memory":
        return MemoryBuffer(destinations, when_full=b.when_full)
    return DiskBuffer(
        config.buffer_path,
        destinations,
        max_bytes=b.max_bytes,
        max_age_s=b.max_age_s,
        when_full=b.when_full,
        segment_bytes=b.segment_bytes,
        fsync_interval_ms=b.fsync_interval_ms,
    )
