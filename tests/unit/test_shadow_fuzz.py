"""Generated hostile documents: mutations of valid desired documents (values swapped for hostile ones, keys
added, removed or renamed, sources renamed or duplicated) never crash the validator, and every document it
accepts keeps the trust boundary, checked by an oracle written from the rules rather than from the code:
no identity, path, serial device, credential, security setting or cloud endpoint differs from the local file
unless the local file allows it, and every host a new or moved source targets is allowed."""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_gateway.config.model import GatewayConfig, parse_config
from edge_gateway.control.desired import effective_config
from edge_gateway.errors import ConfigError
from edge_gateway.sources.modbus.config import ModbusTcpSource
from edge_gateway.sources.opcua.config import OpcUaSecurity, OpcUaSource
from tests.unit.test_shadow_policy import LEGITIMATE, local_doc

LOCAL = parse_config(local_doc())
BASES = [make() for _, make, _ in LEGITIMATE]
PERMANENT = {0x87, 0x90, 0x95, 0x99}

HOSTILE_VALUES: list[Any] = [
    "spy://loop://?file=/tmp/x&raw",
    "loop://",
    "socket://127.0.0.1:1",
    "rfc2217://127.0.0.1:2217",
    "/dev/ttyUSB0",
    "/dev/ttyS9",
    "127.0.0.1",
    "127.0.0.5",
    "127.0.0.8",
    "127.1",
    "::1",
    "::ffff:192.0.2.1",
    "::ffff:127.0.0.2",
    "192.0.2.1",
    "2001:db8::1",
    "plc-7.plant.local",
    "PLC-7.plant.local.",
    "plc.evil.example",
    "opc.tcp://127.0.0.1:4840",
    "opc.tcp://127.0.0.1:4841",
    "opc.tcp://127.0.0.2:4840",
    "opc.tcp://127.0.0.3:4840",
    "opc.tcp://192.0.2.1:4840",
    "opc.tcp://[::1]:4840",
    "opc.tcp://x@127.0.0.3:4840",
    "opc.tcp://127.0.0.1:4840/rogue",
    "broker.evil.example",
    "backup-ats.iot.eu-west-1.amazonaws.com",
    "example-ats.iot.eu-west-1.amazonaws.com",
    "None",
    "Sign",
    "SignAndEncrypt",
    "rtu",
    "tcp",
    "rtu_over_tcp",
    "opcua",
    "modbus",
    "press",
    "oven",
    "boiler",
    "line",
    "pump",
    "dt/{thing}/audit",
    "/etc/shadow",
    "",
    0,
    -1,
    1,
    443,
    502,
    1883,
    4840,
    8883,
    0x87,
    0x97,
    10**9,
    2**63,
    0.0001,
    1e300,
    True,
    None,
    [],
    {},
    [0x97],
    [0x87, 0x90],
    {"mode": "Sign"},
    {"mode": "SignAndEncrypt", "cert_dir": "/var/lib/gw/pki"},
    {"mode": "SignAndEncrypt", "cert_dir": "/var/lib/gw/pki", "trust_on_first_use": True},
    {"username": "operator", "password_env": "PRESS_PASSWORD"},
    {"username": "u", "password_file": "/etc/shadow"},
    {"port": "/dev/ttyUSB0"},
    {"port": "spy://loop://?file=/tmp/x"},
    {"host": "proxy.evil.example", "port": 3128},
]
KEYS = [
    "security",
    "auth",
    "serial",
    "host",
    "endpoint",
    "port",
    "transport",
    "name",
    "type",
    "dead_letter_codes",
    "client_id",
    "proxy",
    "key_file",
    "mode",
    "file",
    "topic",
    "trust_on_first_use",
    "cert_dir",
    "gateway",
    "buffer",
    "shadow",
    "limits",
    "metrics",
    "audit",
    "dead_letter",
    "allowed_source_hosts",
    "devices",
    "",
]
# Copied when drawn: a list or object from the pool must not be shared between documents (or with itself).
_values = st.sampled_from(HOSTILE_VALUES).map(copy.deepcopy) | st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    max_leaves=6,
)


# Values that fit the field, so that many mutated documents pass the models and reach the policy.
_FIELD_VALUES: dict[str, list[Any]] = {
    "name": ["pump", "press", "press2", "oven", "boiler", "line", "line2"],
    "host": [v for v in HOSTILE_VALUES if isinstance(v, str) and ("." in v or ":" in v) and "/" not in v],
    "endpoint": [v for v in HOSTILE_VALUES if isinstance(v, str) and v.startswith("opc.tcp://")],
    "serial": [{"port": "/dev/ttyUSB0"}, {"port": "/dev/ttyUSB1", "baudrate": 9600}, {"port": "loop://"}],
    "security": [v for v in HOSTILE_VALUES if isinstance(v, dict) and "mode" in v],
    "port": [502, 4840, 5020],
    "nodes": [  # the first fits every model but not AWS's 8 KB: only the document limit refuses it
        [{"alias": f"n.{i}", "node_id": f"ns=2;s=Line.Node{i:04}"} for i in range(300)],
        [{"alias": "n.a", "node_id": "ns=2;s=A"}, {"alias": "n.b", "node_id": "ns=2;s=B"}],
    ],
}
_CODES: list[list[int]] = [[0x97], [0x87, 0x80], [0x90, 0x95], [0x87, 0x90, 0x95, 0x99], [0x83], [0x91, 0x99]]


def _depth(node: Any) -> int:
    if isinstance(node, dict):
        return 1 + max((_depth(v) for v in node.values()), default=0)
    if isinstance(node, list):
        return 1 + max((_depth(v) for v in node), default=0)
    return 0


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in items:
        out += _paths(child, (*path, key))
    return out


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _mutate_source(draw: st.DrawFn, sources: list[Any], *, fitting: bool) -> None:
    """Rename, move or re-secure one source, in place or as a second source beside it."""
    i = draw(st.integers(0, len(sources) - 1))
    source = copy.deepcopy(sources[i])
    if isinstance(source, dict):
        opcua = source.get("type") == "opcua"
        fields = ["name", "endpoint", "security", "nodes"] if opcua else ["name", "host", "port", "serial"]
        field = draw(st.sampled_from(fields))
        pool = st.sampled_from(_FIELD_VALUES[field])
        source[field] = copy.deepcopy(draw(pool if fitting else pool | _values))
    if draw(st.booleans()):
        sources[i] = source
    else:
        sources.insert(draw(st.integers(0, len(sources))), source)


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    targeted = isinstance(doc.get("sources"), list) and bool(doc["sources"]) and draw(st.booleans())
    if targeted:  # half the documents: one change that fits its field, so most reach the policy checks
        _mutate_source(draw, doc["sources"], fitting=True)
    elif draw(st.booleans()):  # or a destination's dead-letter codes
        dest = {"type": "iotcore", "name": draw(st.sampled_from(["cloud", "archive"])), "dead_letter_codes": []}
        dest["dead_letter_codes"] = list(draw(st.sampled_from(_CODES)))
        doc.setdefault("publisher", {})["destinations"] = [dest]
    for _ in range(draw(st.sampled_from([0, 0, 1, 2] if targeted else [1, 1, 1, 2, 3, 4]))):
        path = draw(st.sampled_from(_paths(doc)))
        node = _at(doc, path)
        op = draw(st.sampled_from(["replace", "add", "delete", "duplicate", "sources"]))
        if op == "sources" and not (isinstance(doc.get("sources"), list) and doc["sources"]):
            doc["sources"] = copy.deepcopy(draw(st.sampled_from([b for b in BASES if "sources" in b]))["sources"])
        elif op == "sources":
            _mutate_source(draw, doc["sources"], fitting=False)
        elif op == "add" and isinstance(node, dict):
            node[draw(st.sampled_from(KEYS))] = draw(_values)
        elif op == "add" and isinstance(node, list):
            node.append(draw(_values))
        elif op == "duplicate" and isinstance(node, list) and node:
            node.append(copy.deepcopy(node[0]))
        elif op == "delete" and path:
            del _at(doc, path[:-1])[path[-1]]
        elif path:
            _at(doc, path[:-1])[path[-1]] = draw(_values)
    return doc


def _host_allowed(host: str) -> bool:
    """The local file's shadow.allowed_source_hosts, as the rules say: 127.0.0.0/29, plc-7.plant.local, ::1."""
    host = host.lower().strip("[]").rstrip(".")
    if host == "plc-7.plant.local":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr == ipaddress.ip_address("::1") or (addr.version == 4 and addr in ipaddress.ip_network("127.0.0.0/29"))


def _endpoint(url: str) -> tuple[str | None, int, str]:
    parts = urlsplit(url)
    return parts.hostname, parts.port or 4840, parts.path.rstrip("/")


def _keeps_the_boundary(local: GatewayConfig, cfg: GatewayConfig) -> None:
    for section in ("gateway", "buffer", "metrics", "audit", "shadow"):
        assert getattr(cfg, section) == getattr(local, section), section
    assert cfg.publisher.dead_letter == local.publisher.dead_letter
    assert (cfg.status.file, cfg.heartbeat.topic) == (local.status.file, local.heartbeat.topic)
    mqtt, mine = cfg.publisher.mqtt, local.publisher.mqtt
    for name in ("mode", "client_id", "ca_file", "cert_file", "key_file", "proxy"):
        assert getattr(mqtt, name) == getattr(mine, name), name
    where = (mqtt.endpoint.lower().rstrip("."), mqtt.port)
    assert (
        where == (mine.endpoint, mine.port)
        or where[0] == "backup-ats.iot.eu-west-1.amazonaws.com"
        or where
        == (
            "127.0.0.1",
            8883,
        )
    ), where
    before = {(s.name, s.type): s for s in local.sources}
    for s in cfg.sources:
        same = before.get((s.name, s.type))
        if isinstance(s, ModbusTcpSource):
            if s.serial is not None:
                assert isinstance(same, ModbusTcpSource)
                assert same.serial is not None
                assert s.serial.port == same.serial.port
            elif not (isinstance(same, ModbusTcpSource) and (same.host, same.port) == (s.host, s.port)):
                assert _host_allowed(s.host or ""), s.host
            continue
        assert isinstance(s, OpcUaSource)
        host, port, path = _endpoint(s.endpoint)
        assert "@" not in s.endpoint
        if not isinstance(same, OpcUaSource):
            assert (s.security, s.auth) == (OpcUaSecurity(), None)
            assert _host_allowed(host or ""), host
        else:
            assert (s.security, s.auth) == (same.security, same.auth)
            if _endpoint(same.endpoint) != (host, port, path):
                assert _host_allowed(host or ""), host
                assert same.security.mode == "None"
                assert same.auth is None
        if host == "127.0.0.1":  # the secured press's host: nothing weaker there
            assert s.security.mode == "SignAndEncrypt" or (
                isinstance(same, OpcUaSource) and same.endpoint == s.endpoint
            )
    local_codes = {d.name: set(d.dead_letter_codes) for d in local.publisher.destinations}
    for d in cfg.publisher.destinations:
        assert set(d.dead_letter_codes) <= PERMANENT | local_codes.get(d.name, set()), d.dead_letter_codes


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_a_mutated_document_is_refused_with_reasons_or_keeps_the_trust_boundary(desired: Any) -> None:
    errors = []
    try:
        cfg = effective_config(LOCAL, desired)
    except ConfigError as exc:
        errors = exc.errors
    else:
        _keeps_the_boundary(LOCAL, cfg)
        assert len(json.dumps(desired, separators=(",", ":"), ensure_ascii=False).encode()) <= 8192
        assert _depth(desired) <= 6  # AWS's limit, desired being level 1
        return
    assert errors
    assert all(isinstance(e.path, str) and e.path and isinstance(e.message, str) and e.message for e in errors)


def test_the_oracle_catches_what_the_validator_must_refuse() -> None:
    """The invariants above are not vacuous: configs built past the validator break them."""
    doc = local_doc()
    doc["sources"][2]["host"] = "192.0.2.9"
    with_foreign_host = parse_config(doc)
    cases = [with_foreign_host]
    moved = local_doc()
    moved["sources"][0]["endpoint"] = "opc.tcp://127.0.0.2:4840"
    cases.append(parse_config(moved))
    serial = local_doc()
    serial["sources"][3]["serial"]["port"] = "/dev/ttyS1"
    cases.append(parse_config(serial))
    for cfg in cases:
        try:
            _keeps_the_boundary(LOCAL, cfg)
        except AssertionError:
            continue
        raise AssertionError(cfg)
