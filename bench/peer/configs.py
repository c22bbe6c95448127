"""Both sides' configuration for one run, written into that run's directory.

- ``ours(...)``: the gateway's YAML document: one Modbus source ``plant`` (flat form, unit 1) with every
  float32 tag of the dataset as a point named by the tag's name, polled every 100 ms; the publisher on the
  local broker with mutual TLS and IoT Core flow control off; everything else at its defaults (disk
  buffer with fsync per group commit, heartbeat, audit trail, shadow).
- ``thingsboard(...)``: ``tb_gateway.json``, ``logs.json`` (its loggers at INFO to stdout, the root logger at
  ERROR as in its shipped logs.json, which keeps pymodbus's per-decode deprecation warning quiet) and
  ``modbus.json`` in a directory. The registers are read as wide-range tags, one per 124-register block
  (62 float32, the same requests ours makes); ThingsBoard names the values of a wide-range tag from one
  template with ``${address}``, so a block's keys are the name of its first tag (without a trailing
  ``_<number>``) followed by ``_<address>``: close to our names in length (``key_chars`` tells both
  means), not equal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.dataset import RegisterPoint

BLOCK_REGISTERS = 124  # 62 float32: what both planners put in one read (at most 125 registers per read)
POLL_MS = 100
PEER_DEVICE = "plant"
_SERIAL_SUFFIX = re.compile(r"_\d+$")


def ours(
    path: Path, *, thing: str, data_dir: Path, modbus_port: int, broker_port: int, pki_dir: Path,
    points: Sequence[RegisterPoint],
) -> Path:  # fmt: skip
    doc: dict[str, Any] = {
        "gateway": {"thing_name": thing, "data_dir": str(data_dir)},
        "sources": [
            {
                "type": "modbus",
                "name": "plant",
                "host": "127.0.0.1",
                "port": modbus_port,
                "unit_id": 1,
                "poll_interval_ms": POLL_MS,
                "timeout_s": 2.0,
                "points": [p.gateway_point() for p in points],
            }
        ],
        "publisher": {
            "mqtt": {
                "endpoint": "127.0.0.1",
                "port": broker_port,
                "ca_file": str(pki_dir / "ca.pem"),
                "cert_file": str(pki_dir / f"{thing}.pem"),
                "key_file": str(pki_dir / f"{thing}.key"),
                "iot_core_flow_control": False,
            },
            "destinations": [{"type": "iotcore", "name": "cloud"}],
        },
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def peer_keys(points: Sequence[RegisterPoint]) -> list[tuple[int, int, str]]:
    """(first address, registers, key template) of each wide-range block ThingsBoard reads."""
    blocks: list[tuple[int, int, str]] = []
    end = points[-1].address + points[-1].registers if points else 0
    by_address = {p.address: p for p in points}
    for start in range(0, end, BLOCK_REGISTERS):
        first = by_address[start]
        stem = _SERIAL_SUFFIX.sub("", first.tag.name)
        blocks.append((start, min(BLOCK_REGISTERS, end - start), stem + "_${address}"))
    return blocks


def key_chars(points: Sequence[RegisterPoint]) -> tuple[float, float]:
    """Mean characters of a point's name: ours (the tag name) and ThingsBoard's (template with the address)."""
    if not points:
        return 0.0, 0.0
    ours_mean = sum(len(p.tag.name) for p in points) / len(points)
    peer_total = 0
    for start, count, template in peer_keys(points):
        peer_total += sum(len(template.replace("${address}", str(a))) for a in range(start, start + count, 2))
    return ours_mean, peer_total / len(points)


def thingsboard(directory: Path, *, modbus_port: int, broker_port: int, pki_dir: Path, client: str,
                points: Sequence[RegisterPoint]) -> Path:  # fmt: skip
    if any(p.data_type != "float32" for p in points):
        msg = "the peer workload is float32 tags only (one wide-range template type per block)"
        raise ValueError(msg)
    directory.mkdir(parents=True, exist_ok=True)
    main = {
        "thingsboard": {
            "host": "127.0.0.1",
            "port": broker_port,
            "remoteShell": False,
            "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {
                "enable": False,
                "enableCustom": False,
                "statsSendPeriodInSeconds": 3600,
                "customStatsSendPeriodInSeconds": 3600,
            },
            "deviceFiltering": {"enable": False, "filterFile": "list.json"},
            "maxPayloadSizeBytes": 126_000,
            "minPackSendDelayMS": 50,
            "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 3600,
            "handleDeviceRenaming": False,
            "syncDevicesSharedAttributesOnConnect": False,
            "security": {
                "type": "tlsCertificates",
                "caCert": str(pki_dir / "ca.pem"),
                "cert": str(pki_dir / f"{client}.pem"),
                "privateKey": str(pki_dir / f"{client}.key"),
            },
            "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {
                "checkDeviceInactivity": False,
                "inactivityTimeoutSeconds": 300,
                "inactivityCheckPeriodSeconds": 10,
            },
            "rateLimits": "0:0,",
            "dpRateLimits": "0:0,",
            "messagesRateLimits": "0:0,",
            "deviceMessagesRateLimits": "0:0,",
            "deviceRateLimits": "0:0,",
            "deviceDpRateLimits": "0:0,",
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 100_000},
        "grpc": {"enabled": False, "serverPort": 9595},
        "connectors": [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}],
    }
    timeseries = [
        {
            "tag": template,
            "type": "32float",
            "functionCode": 3,
            "objectsCount": 2,
            "address": f"{start}-{start + count - 1}",
            "maxRegistersPerRequest": BLOCK_REGISTERS,
        }
        for start, count, template in peer_keys(points)
    ]
    modbus = {
        "master": {
            "slaves": [
                {
                    "host": "127.0.0.1",
                    "port": modbus_port,
                    "type": "tcp",
                    "method": "socket",
                    "unitId": 1,
                    "deviceName": PEER_DEVICE,
                    "deviceType": "default",
                    "timeout": 2,
                    "byteOrder": "BIG",
                    "wordOrder": "BIG",
                    "retries": 0,
                    "retryOnEmpty": False,
                    "retryOnInvalid": False,
                    "pollPeriod": POLL_MS,
                    "connectAttemptTimeMs": 500,
                    "connectAttemptCount": 5,
                    "waitAfterFailedAttemptsMs": 30000,
                    "attributes": [],
                    "timeseries": timeseries,
                    "attributeUpdates": [],
                    "rpc": [],
                }
            ]
        }
    }
    loggers = ("service", "connector", "converter", "tb_connection", "storage", "extension", "database")
    logs = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stdout"}},
        "loggers": {name: {"handlers": ["stdout"], "level": "INFO", "propagate": False} for name in loggers},
        "root": {"handlers": ["stdout"], "level": "ERROR"},  # as its shipped logs.json
    }
    (directory / "tb_gateway.json").write_text(json.dumps(main, indent=2))
    (directory / "modbus.json").write_text(json.dumps(modbus, indent=2))
    (directory / "logs.json").write_text(json.dumps(logs, indent=2))
    return directory
