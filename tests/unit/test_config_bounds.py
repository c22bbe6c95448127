"""The configuration document's own validation (issue 17): serial devices, templates and the topics they
make, a minimum and a maximum for every number, and the whole-document budget (``limits``).

Each refusal names its field path and the reason; each boundary is accepted; the shipped example and the
demo's config still validate; docs/configuration.md's "Ranges" table equals the models.
"""

from __future__ import annotations

import copy
import json
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from edge_gateway.config.model import GatewayConfig, load_config, parse_config
from edge_gateway.errors import ConfigError
from simulators.demo import write_config

ROOT = Path(__file__).parents[2]
Doc = dict[str, Any]
Mutation = Callable[[Doc], None]
THING = "line1-gw"


def valid_doc() -> Doc:
    return {
        "gateway": {"thing_name": THING},
        "sources": [
            {
                "type": "opcua",
                "name": "press",
                "endpoint": "opc.tcp://127.0.4.21:4840",
                "nodes": [{"alias": "press.counter", "node_id": "ns=2;s=Line1.Counter"}],
            },
            {
                "type": "modbus",
                "name": "boiler",
                "host": "127.0.4.20",
                "points": [{"alias": "boiler.t", "address": 2, "data_type": "int16", "scale": 0.1}],
            },
        ],
        "publisher": {
            "mqtt": {"endpoint": "example-ats.iot.eu-west-1.amazonaws.com", "cert_file": "c.pem", "key_file": "k.pem"},
            "destinations": [{"type": "iotcore", "name": "cloud"}, {"type": "sitewise", "name": "sw"}],
        },
    }


def errors_of(mutate: Mutation) -> dict[str, str]:
    doc = valid_doc()
    mutate(doc)
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return {e.path: e.message for e in info.value.errors}


def accepted(mutate: Mutation) -> GatewayConfig:
    doc = valid_doc()
    mutate(doc)
    return parse_config(doc)


# --- small mutations -------------------------------------------------------------------------------------


def iot_topic(topic: str) -> Mutation:
    return lambda d: d["publisher"]["destinations"][0].update(topic=topic)


def sw(**fields: Any) -> Mutation:
    return lambda d: d["publisher"]["destinations"][1].update(fields)


def section(name: str, **fields: Any) -> Mutation:
    return lambda d: d.setdefault(name, {}).update(fields)


def mqtt(**fields: Any) -> Mutation:
    return lambda d: d["publisher"]["mqtt"].update(fields)


def opcua(**fields: Any) -> Mutation:
    return lambda d: d["sources"][0].update(fields)


def modbus(**fields: Any) -> Mutation:
    return lambda d: d["sources"][1].update(fields)


def serial(port: str) -> Mutation:
    return modbus(transport="rtu", host=None, serial={"port": port})


def point(**fields: Any) -> Mutation:
    return lambda d: d["sources"][1]["points"][0].update(fields)


def both(*mutations: Mutation) -> Mutation:
    def apply(doc: Doc) -> None:
        for m in mutations:
            m(doc)

    return apply


def modbus_copies(n: int, *, spread: bool = False, **fields: Any) -> Mutation:
    """``n`` more copies of the Modbus source, on its host or (``spread``) each on a host of its own."""

    def apply(doc: Doc) -> None:
        for i in range(n):
            host = {"host": f"127.0.5.{i}"} if spread else {}
            doc["sources"].append(copy.deepcopy(doc["sources"][1]) | {"name": f"m{i}", **host, **fields})

    return apply


def opcua_nodes(n: int, **fields: Any) -> Mutation:
    nodes = [{"alias": f"n{i}", "node_id": f"ns=2;i={i}"} for i in range(n)]
    return opcua(nodes=nodes, **fields)


def modbus_points(n: int, **fields: Any) -> Mutation:
    return modbus(points=[{"alias": f"p{i}", "address": i} for i in range(n)], **fields)


def name_of(length: int) -> str:
    return "s" * length


# A thing name of 128 and a source name of 64 make the default topic "dt/<128>/<64>" 195 bytes: a
# template of 62 more literal bytes passes only with the names it is really used with.
LONG_THING = "t" * 128
PAD_257 = "x" * (257 - len(f"dt/{LONG_THING}/{name_of(64)}") - 1)  # + "/" before the rest: 257 bytes
# SiteWise: "$aws/rules/r_{type}/{thing}/<pad>{type}" is 256 bytes with the longest types (integer, boolean).
SW_PREFIX = f"$aws/rules/r_integer/{LONG_THING}/"
SW_PAD_256 = "x" * (256 - len(SW_PREFIX) - len("integer"))

SERIAL_URLS = ["spy://loop://?file=/tmp/x&raw", "loop://", "socket://127.0.0.1:7000", "rfc2217://127.0.0.1:7000"]
SERIAL_URLS += ["hwgrep://ttyUSB", "alt:///dev/ttyS0?class=PosixPollSerial", "/dev/ttyUSB0://"]

REFUSED: list[tuple[str, Mutation, str, str]] = [
    # 1. a serial port is a device path, never a URL
    *[
        (f"serial-url-{i}", serial(url), "sources.1.modbus.serial.port", "is a URL")
        for i, url in enumerate(SERIAL_URLS)
    ],
    ("serial-file", serial("/etc/passwd"), "sources.1.modbus.serial.port", "not a serial device path"),
    ("serial-relative", serial("ttyUSB0"), "sources.1.modbus.serial.port", "not a serial device path"),
    ("serial-dotdot", serial("/dev/../etc/passwd"), "sources.1.modbus.serial.port", "not a serial device path"),
    ("serial-dotdot-tty", serial("/dev/tty/../sda"), "sources.1.modbus.serial.port", "not a serial device path"),
    ("serial-disk", serial("/dev/sda"), "sources.1.modbus.serial.port", "not a serial device path"),
    ("serial-null", serial("/dev/null"), "sources.1.modbus.serial.port", "not a serial device path"),
    ("serial-bare-tty", serial("/dev/tty"), "sources.1.modbus.serial.port", "not a serial device path"),
    ("serial-pts-name", serial("/dev/pts/ptmx"), "sources.1.modbus.serial.port", "not a serial device path"),
    ("serial-tmp-tty", serial("/tmp/ttyUSB9"), "sources.1.modbus.serial.port", "not a serial device path"),
    # 2. templates: only the documented placeholders, written plainly
    ("spec", iot_topic("dt/{thing:>200000000}/{source}"), "publisher.destinations.0.iotcore.topic", "format spec"),
    ("conversion", iot_topic("dt/{thing!r}/{source}"), "publisher.destinations.0.iotcore.topic", "conversion"),
    ("positional", iot_topic("dt/{0}/{source}"), "publisher.destinations.0.iotcore.topic", "no positional"),
    ("auto-number", iot_topic("dt/{}/{source}"), "publisher.destinations.0.iotcore.topic", "no positional"),
    ("attribute", iot_topic("dt/{thing.real}/x"), "publisher.destinations.0.iotcore.topic", "attribute"),
    ("index", iot_topic("dt/{thing[0]}/x"), "publisher.destinations.0.iotcore.topic", "index"),
    ("nested", iot_topic("dt/{thing:{source}}"), "publisher.destinations.0.iotcore.topic", "format spec"),
    ("unclosed", iot_topic("dt/{thing"), "publisher.destinations.0.iotcore.topic", "not a valid template"),
    ("lone-close", iot_topic("dt/thing}"), "publisher.destinations.0.iotcore.topic", "not a valid template"),
    ("unknown", iot_topic("dt/{plant}"), "publisher.destinations.0.iotcore.topic", "unknown placeholder(s) ['plant']"),
    ("type-on-iotcore", iot_topic("dt/{type}"), "publisher.destinations.0.iotcore.topic", "unknown placeholder"),
    (
        "sw-topic-spec",
        sw(topic="$aws/rules/r_{type:9}/{thing}"),
        "publisher.destinations.1.sitewise.topic",
        "format spec",
    ),
    ("sw-alias-spec", sw(alias="/{thing}/{point:>99999}"), "publisher.destinations.1.sitewise.alias", "format spec"),
    ("sw-alias-conv", sw(alias="/{thing!s}/{point}"), "publisher.destinations.1.sitewise.alias", "conversion"),
    ("heartbeat-spec", section("heartbeat", topic="dt/{thing:9999}/status"), "heartbeat.topic", "format spec"),
    ("audit-spec", section("audit", topic="dt/{thing!a}/audit"), "audit.topic", "conversion"),
    ("control-char", iot_topic("dt/{thing}/\x00"), "publisher.destinations.0.iotcore.topic", "control characters"),
    ("wildcard", iot_topic("dt/{thing}/#"), "publisher.destinations.0.iotcore.topic", "wildcards"),
    # 2. the formatted topic against IoT Core's limits, with the real thing and source names
    (
        "257-bytes",
        both(
            lambda d: d["gateway"].update(thing_name=LONG_THING),
            modbus(name=name_of(64)),
            iot_topic("dt/{thing}/{source}/" + PAD_257),
        ),
        "publisher.destinations.0.iotcore.topic",
        "is 257 bytes, over IoT Core's 256",
    ),
    ("8-slashes", iot_topic("a/b/c/d/e/f/g/{thing}/{source}"), "publisher.destinations.0.iotcore.topic", "8 slashes"),
    (
        "8-slashes-after-rule",
        iot_topic("$aws/rules/r/a/b/c/d/e/f/g/{thing}/{source}"),
        "publisher.destinations.0.iotcore.topic",
        "8 slashes",
    ),
    (
        "sitewise-longest-type",  # 255 bytes with "double" (checked first), 257 with "integer"
        both(
            lambda d: d["gateway"].update(thing_name=LONG_THING),
            sw(topic="$aws/rules/r_{type}/{thing}/" + SW_PAD_256 + "x{type}"),
        ),
        "publisher.destinations.1.sitewise.topic",
        "and type 'integer', topic",
    ),
    ("on-status", iot_topic("dt/{thing}/status"), "publisher.destinations.0.iotcore.topic", "the heartbeat topic"),
    ("on-audit", iot_topic("dt/{thing}/audit"), "publisher.destinations.0.iotcore.topic", "the audit topic"),
    (
        "on-moved-audit",
        both(section("audit", topic="plant/{thing}/gxp"), modbus(name="gxp"), iot_topic("plant/{thing}/{source}")),
        "publisher.destinations.0.iotcore.topic",
        "source 'gxp'",
    ),
    (
        "shadow-topic",
        iot_topic("$aws/things/{thing}/shadow/update"),
        "publisher.destinations.0.iotcore.topic",
        "reserved",
    ),
    ("dollar-topic", iot_topic("$SYS/{thing}"), "publisher.destinations.0.iotcore.topic", "reserved"),
    ("rule-without-name", iot_topic("$aws/rules//{thing}"), "publisher.destinations.0.iotcore.topic", "reserved"),
    (
        "sw-on-shadow",
        sw(topic="$aws/things/{thing}/{type}/{source}"),
        "publisher.destinations.1.sitewise.topic",
        "reserved",
    ),
    ("heartbeat-reserved", section("heartbeat", topic="$aws/things/{thing}/x"), "heartbeat.topic", "reserved"),
    ("audit-on-heartbeat", section("audit", topic="dt/{thing}/status"), "audit.topic", "also the heartbeat topic"),
    ("heartbeat-long", section("heartbeat", topic="x" * 250 + "/{thing}"), "heartbeat.topic", "over IoT Core's 256"),
    # 3. every number has a minimum and a maximum
    ("reconnect-1e9", modbus(reconnect_max_s=1e9), "sources.1.modbus.reconnect_max_s", "less than or equal to 3600"),
    ("reconnect-opcua", opcua(reconnect_max_s=1e9), "sources.0.opcua.reconnect_max_s", "less than or equal to 3600"),
    ("reconnect-mqtt", mqtt(reconnect_max_s=1e9), "publisher.mqtt.reconnect_max_s", "less than or equal to 3600"),
    (
        "reconnect-tiny",
        modbus(reconnect_min_s=0.001),
        "sources.1.modbus.reconnect_min_s",
        "greater than or equal to 0.05",
    ),
    ("status-tiny", section("status", interval_s=0.0001), "status.interval_s", "greater than or equal to 0.2"),
    ("poll-5ms", modbus(poll_interval_ms=5), "sources.1.modbus.poll_interval_ms", "greater than or equal to 10"),
    ("buffer-huge", section("buffer", max_bytes=1 << 41), "buffer.max_bytes", "less than or equal to"),
    ("buffer-age-0", section("buffer", max_age_s=0), "buffer.max_age_s", "greater than or equal to 1"),
    ("scale-inf", point(scale=float("inf")), "sources.1.modbus.points.0.scale", "finite number"),
    ("offset-nan", point(offset=float("nan")), "sources.1.modbus.points.0.offset", "finite number"),
    ("scale-huge", point(scale=1e10), "sources.1.modbus.points.0.scale", "less than or equal to"),
    ("deadband-huge", opcua(deadband_value=1e13), "sources.0.opcua.deadband_value", "less than or equal to"),
    ("data-age-huge", opcua(max_data_age_s=1e9), "sources.0.opcua.max_data_age_s", "less than or equal to 86400"),
    ("timeout-zero", modbus(timeout_s=0), "sources.1.modbus.timeout_s", "greater than or equal to 0.05"),
    ("audit-files", section("audit", max_files=10**9), "audit.max_files", "less than or equal to 100000"),
    ("shadow-timeout", section("shadow", request_timeout_s=0.001), "shadow.request_timeout_s", "greater than or equal"),
    ("limits-huge", section("limits", max_points_per_s=10**12), "limits.max_points_per_s", "less than or equal"),
    (
        "codes-long",
        sw(dead_letter_codes=[135] * 129),
        "publisher.destinations.1.sitewise.dead_letter_codes",
        "at most 128",
    ),
    # 4. the whole-document budget
    (
        "40x16-at-10ms",
        modbus_copies(40, max_outstanding=16, poll_interval_ms=10),
        "sources.41.modbus",
        "open 641 connections/sessions to host 127.0.4.20, over the limit of 32: raise limits.max_connections_per_host",
    ),
    (
        "points-per-s",
        modbus_points(1001, poll_interval_ms=10),
        "sources",
        "read up to 100,102 points/s (most: 'boiler' with 100,100), over the limit of 100,000",
    ),
    (
        "opcua-sampling",
        opcua_nodes(1001, sampling_interval_ms=10, publishing_interval_ms=1000),
        "sources",
        "raise limits.max_points_per_s in the local config file",
    ),
    (
        "nodes-per-source",
        opcua_nodes(20_001, publishing_interval_ms=60_000),
        "sources.0.opcua",
        "source 'press' reads 20001 points/nodes, over the limit of 20,000: raise limits.max_nodes_per_source",
    ),
    (
        "sources",
        modbus_copies(99, spread=True),
        "sources",
        "101 sources, over the limit of 100: raise limits.max_sources",
    ),
    (
        "one-serial-two-sources",
        both(
            serial("/dev/ttyUSB0"),
            modbus_copies(1),
            lambda d: d["sources"][2].update(points=[{"alias": "x", "address": 1}]),
        ),
        "sources.2.modbus",
        "serial device /dev/ttyUSB0 is used by sources 'boiler', 'm0'",
    ),
]


@pytest.mark.parametrize(("mutate", "path", "reason"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused_with_its_path_and_reason(mutate: Mutation, path: str, reason: str) -> None:
    errors = errors_of(mutate)
    assert path in errors, f"no error at {path}: {errors}"
    assert reason in errors[path]


ACCEPTED: list[tuple[str, Mutation]] = [
    ("serial-usb", serial("/dev/ttyUSB0")),
    ("serial-acm", serial("/dev/ttyACM1")),
    ("serial-ama", serial("/dev/ttyAMA0")),
    ("serial-s", serial("/dev/ttyS3")),
    ("serial-by-id", serial("/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0")),
    ("serial-by-path", serial("/dev/serial/by-path/platform-3f980000.usb-usb-0:1.2:1.0-port0")),
    ("serial-rfcomm", serial("/dev/rfcomm0")),
    ("serial-pts", serial("/dev/pts/7")),
    ("literal-braces", iot_topic("dt/{{x}}/{thing}/{source}")),
    ("basic-ingest", iot_topic("$aws/rules/plant_ingest/{thing}/{source}")),
    ("basic-ingest-bare", iot_topic("$aws/rules/plant_ingest")),
    ("7-slashes", iot_topic("a/b/c/d/e/f/{thing}/{source}")),
    ("7-slashes-after-rule", iot_topic("$aws/rules/r/a/b/c/d/e/f/{thing}/{source}")),
    (
        "256-bytes",
        both(
            lambda d: d["gateway"].update(thing_name=LONG_THING),
            modbus(name=name_of(64)),
            iot_topic("dt/{thing}/{source}/" + PAD_257[:-1]),
        ),
    ),
    (
        "sitewise-256-with-integer",  # 256 bytes with "integer" and "boolean" (7 letters), 254 with the others
        both(
            lambda d: d["gateway"].update(thing_name=LONG_THING),
            sw(topic="$aws/rules/r_{type}/{thing}/" + SW_PAD_256 + "{type}"),
        ),
    ),
    ("moved-status", both(section("heartbeat", topic="plant/{thing}/hb"), iot_topic("dt/{thing}/status"))),
    ("alias-literal", sw(alias="/plant/{thing}/{source}/{point}")),
    ("status-0.2", section("status", interval_s=0.2)),
    ("reconnect-edges", modbus(reconnect_min_s=0.05, reconnect_max_s=3600)),
    ("mqtt-reconnect-edges", mqtt(reconnect_min_s=0.05, reconnect_max_s=3600)),
    ("poll-10ms", modbus(poll_interval_ms=10)),
    ("32-connections", both(modbus(max_outstanding=16), modbus_copies(1))),
    ("100000-points-per-s", both(modbus_points(999, poll_interval_ms=10), opcua(publishing_interval_ms=10))),
    ("20000-nodes", opcua_nodes(20_000, publishing_interval_ms=60_000)),
    ("100-sources", modbus_copies(98, spread=True)),
    (
        "raised-connections",
        both(modbus_copies(40, max_outstanding=16), section("limits", max_connections_per_host=1024)),
    ),
    ("raised-points", both(modbus_points(1001, poll_interval_ms=10), section("limits", max_points_per_s=200_000))),
    (
        "raised-nodes",
        both(opcua_nodes(20_001, publishing_interval_ms=60_000), section("limits", max_nodes_per_source=20_001)),
    ),
]


@pytest.mark.parametrize("mutate", [a[1] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED])
def test_boundaries_are_accepted(mutate: Mutation) -> None:
    accepted(mutate)


def test_the_budget_counts_what_each_source_asks() -> None:
    cfg = accepted(
        both(
            modbus(
                max_outstanding=4,
                poll_interval_ms=100,
                poll_groups=[{"name": "fast", "interval_ms": 10}],
                points=[{"alias": "a", "address": 0}, {"alias": "b", "address": 1, "group": "fast"}],
            ),
            opcua(
                publishing_interval_ms=500,
                nodes=[
                    {"alias": "fast", "node_id": "ns=2;i=1", "sampling_interval_ms": 100},
                    {"alias": "server", "node_id": "ns=2;i=2"},  # sampling 0: one per publishing interval
                    {"alias": "queued", "node_id": "ns=2;i=3", "sampling_interval_ms": 1, "queue_size": 2},
                ],
                groups=[
                    {
                        "name": "slow",
                        "mode": "poll",
                        "poll_interval_ms": 2000,
                        "nodes": [{"alias": "p", "node_id": "ns=2;i=4"}],
                    }
                ],
            ),
        )
    )
    ua, mb = (s.load for s in cfg.sources)
    assert (mb.host, mb.connections, mb.points, mb.points_per_s) == ("127.0.4.20", 4, 2, 10 + 100)
    assert (ua.host, ua.connections, ua.points, ua.points_per_s) == ("127.0.4.21", 1, 4, 10 + 2 + 4 + 0.5)


def test_refused_documents_list_every_error_at_once() -> None:
    errors = errors_of(
        both(
            iot_topic("dt/{thing}/status"),
            sw(topic="$aws/things/{thing}/{type}/{source}"),
            modbus_copies(40, max_outstanding=16),
        )
    )
    assert {
        "publisher.destinations.0.iotcore.topic",
        "publisher.destinations.1.sitewise.topic",
        "sources.41.modbus",
    } <= set(errors)


# --- every number bounded, and documented as it is -------------------------------------------------------


def _flat(ann: Any) -> Iterator[Any]:
    if typing.get_origin(ann) in (typing.Union, types.UnionType, list, tuple, typing.Annotated):
        for a in typing.get_args(ann):
            yield from _flat(a)
    else:
        yield ann


def numbers(model: type[BaseModel] = GatewayConfig, prefix: str = "") -> Iterator[tuple[str, list[object]]]:
    """(documented path, pydantic metadata) of every int or float field reachable from ``model``."""
    for name, field in model.model_fields.items():
        flat = [a for a in _flat(field.annotation) if a is not Ellipsis]
        path = prefix + name
        if typing.get_origin(field.annotation) is not tuple and any(a in (int, float) for a in flat):
            yield path, list(field.metadata)
        subs = [a for a in flat if isinstance(a, type) and issubclass(a, BaseModel)]
        many = "list[" in str(field.annotation)
        for sub in subs:
            tag = sub.model_fields.get("type")
            kind = f"({typing.get_args(tag.annotation)[0]})" if tag is not None and len(subs) > 1 else ""
            yield from numbers(sub, path + ("[]" if many else "") + kind + ".")


def bounds(metadata: list[object]) -> tuple[object, object]:
    low = next((m.ge for m in metadata if hasattr(m, "ge")), None)
    high = next((m.le for m in metadata if hasattr(m, "le")), None)
    return low, high


def shown(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else repr(value)


def test_every_number_has_an_inclusive_minimum_and_maximum() -> None:
    found = list(numbers())
    assert len(found) > 60
    unbounded = [path for path, metadata in found if None in bounds(metadata)]
    exclusive = [path for path, metadata in found if any(hasattr(m, "gt") or hasattr(m, "lt") for m in metadata)]
    assert unbounded == [], f"numbers without a documented minimum or maximum: {unbounded}"
    assert exclusive == [], f"use ge/le so the documented range is exact: {exclusive}"


def test_the_ranges_table_is_the_models() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    table = text.split("## Ranges", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines() if line.startswith("| `")}
    expected = {path: "| `{}` | {} | {} |".format(path, *map(shown, bounds(md))) for path, md in numbers()}
    assert {p: rows.get(p) for p in expected} == expected
    assert set(rows) == set(expected)


# --- what ships still validates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples").glob("*.y*ml")) + sorted((ROOT / "examples").glob("*.json"))
)
def test_every_example_validates(path: Path) -> None:
    load_config(path)


def test_the_demo_config_validates(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, 8883, 4840, 5020))
    assert [s.name for s in cfg.sources] == ["press", "boiler"]


def test_the_documented_deployment_config_validates() -> None:
    deployment = json.loads((ROOT / "deploy" / "deployment.json").read_text(encoding="utf-8"))
    merges = [json.loads(c["configurationUpdate"]["merge"]) for c in deployment["components"].values()]
    (shipped,) = [m["gatewayConfig"] for m in merges if "gatewayConfig" in m]
    mqtt_settings = valid_doc()["publisher"]["mqtt"]  # from the nucleus in a deployment (config/greengrass.py)
    parse_config(
        shipped | {"gateway": {"thing_name": THING}, "publisher": shipped["publisher"] | {"mqtt": mqtt_settings}}
    )
