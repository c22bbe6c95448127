"""The shadow is a trust boundary: a catalogue of hostile desired documents, each refused with the path and the
reason, the legitimate changes that still apply, and ``edge-gateway validate --desired``.

Every host below is a string in a document that is validated, never connected to: foreign hosts are taken
from the ranges reserved for documentation (192.0.2.0/24, 2001:db8::/32, ``.example``).
"""

# ruff: noqa: E501 - the catalogues read best as one row per document
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.cli import main
from edge_gateway.config.model import GatewayConfig, parse_config
from edge_gateway.control.desired import effective_config
from edge_gateway.errors import ConfigError, FieldError
from edge_gateway.sources.opcua.config import OpcUaSource

ENDPOINT = "example-ats.iot.eu-west-1.amazonaws.com"
PRESS, OVEN, BOILER, LINE = 0, 1, 2, 3  # the local file's sources, by index


def local_doc() -> dict[str, Any]:
    """A local file with a secured OPC UA source (with credentials), an unsecured one, Modbus TCP and RTU."""
    return {
        "gateway": {"thing_name": "line1-gw", "data_dir": "/var/lib/gw"},
        "sources": [
            {
                "type": "opcua",
                "name": "press",
                "endpoint": "opc.tcp://127.0.0.1:4840",
                "security": {"mode": "SignAndEncrypt", "cert_dir": "/var/lib/gw/pki"},
                "auth": {"username": "operator", "password_env": "PRESS_PASSWORD"},
                "nodes": [{"alias": "press.counter", "node_id": "ns=2;s=Line1.Counter"}],
            },
            {
                "type": "opcua",
                "name": "oven",
                "endpoint": "opc.tcp://127.0.0.3:4840",
                "nodes": [{"alias": "oven.t", "node_id": "ns=2;s=Oven.T"}],
            },
            {
                "type": "modbus",
                "name": "boiler",
                "host": "127.0.0.1",
                "port": 502,
                "points": [{"alias": "boiler.t", "address": 2, "data_type": "int16"}],
            },
            {
                "type": "modbus",
                "name": "line",
                "transport": "rtu",
                "serial": {"port": "/dev/ttyUSB0"},
                "points": [{"alias": "line.speed", "address": 0}],
            },
        ],
        "publisher": {
            "mqtt": {"endpoint": ENDPOINT, "cert_file": "/var/lib/gw/c.pem", "key_file": "/var/lib/gw/k.pem"},
            "destinations": [{"type": "iotcore", "name": "cloud"}],
        },
        "shadow": {
            "allowed_endpoints": ["backup-ats.iot.eu-west-1.amazonaws.com", "127.0.0.1:8883"],
            "allowed_source_hosts": ["127.0.0.0/29", "plc-7.plant.local", "::1"],
        },
    }


@pytest.fixture(scope="module")
def local() -> GatewayConfig:
    return parse_config(local_doc())


def sources() -> list[dict[str, Any]]:
    """The local file's sources as a desired document carries them (a valid one to start from)."""
    return copy.deepcopy(local_doc()["sources"])


def with_source(index: int, **fields: Any) -> dict[str, Any]:
    srcs = sources()
    srcs[index] |= fields
    return {"sources": srcs}


def without(index: int, *keys: str, **fields: Any) -> dict[str, Any]:
    srcs = sources()
    srcs[index] = {k: v for k, v in srcs[index].items() if k not in keys} | fields
    return {"sources": srcs}


def with_serial(index: int, port: str, **fields: Any) -> dict[str, Any]:
    return with_source(index, transport="rtu", serial={"port": port}, **fields)


def added(**fields: Any) -> dict[str, Any]:
    new = {"type": "modbus", "name": "pump", "points": [{"alias": "pump.x", "address": 0}]} | fields
    return {"sources": [*sources(), new]}


def added_opcua(endpoint: str, **fields: Any) -> dict[str, Any]:
    new = {"type": "opcua", "name": "spy", "endpoint": endpoint, "nodes": [{"alias": "spy.x", "node_id": "i=2258"}]}
    return {"sources": [*sources(), new | fields]}


def security(index: int, **fields: Any) -> dict[str, Any]:
    srcs = sources()
    srcs[index]["security"] = srcs[index].get("security", {}) | fields
    return {"sources": srcs}


def mqtt(**fields: Any) -> dict[str, Any]:
    return {"publisher": {"mqtt": fields}}


def codes(*dead_letter: int) -> dict[str, Any]:
    dest = {"type": "iotcore", "name": "cloud", "dead_letter_codes": list(dead_letter)}
    return {"publisher": {"destinations": [dest]}}


def nested(levels: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"x": 1}
    for _ in range(levels - 1):
        doc = {"x": doc}
    return doc


def refusals(local: GatewayConfig, desired: Any) -> list[FieldError]:
    with pytest.raises(ConfigError) as info:
        effective_config(local, desired)
    assert info.value.errors
    return info.value.errors


# (id, desired document, path of the expected error, text its message must hold)
HOSTILE: list[tuple[str, Callable[[], Any], str, str]] = [
    # Serial devices are local only: pyserial URL handlers open files and sockets (issue 17).
    ("serial-spy-url", lambda: with_serial(LINE, "spy://loop://?file=/var/lib/gw/audit/a.jsonl&raw"), "sources.3.modbus.serial.port", "serial"),
    ("serial-loop-url", lambda: with_serial(LINE, "loop://"), "sources.3.modbus.serial.port", "serial"),
    ("serial-socket-url", lambda: with_serial(LINE, "socket://127.0.0.1:7000"), "sources.3.modbus.serial.port", "serial"),
    ("serial-rfc2217-url", lambda: with_serial(LINE, "rfc2217://127.0.0.1:2217"), "sources.3.modbus.serial.port", "serial"),
    ("serial-hwgrep-url", lambda: with_serial(LINE, "hwgrep://.*"), "sources.3.modbus.serial.port", "serial"),
    ("serial-alt-url", lambda: with_serial(LINE, "alt:///dev/ttyUSB0?class=PosixPollSerial"), "sources.3.modbus.serial.port", "serial"),
    ("serial-other-device", lambda: with_serial(LINE, "/dev/ttyS1"), "sources.3.modbus.serial.port", "serial devices are local only"),
    ("serial-tcp-source-turned-rtu", lambda: with_serial(BOILER, "/dev/ttyUSB1", host=None), "sources.2.modbus.serial.port", "serial devices are local only"),
    ("serial-new-source", lambda: added(transport="rtu", serial={"port": "/dev/ttyUSB1"}), "sources.4.modbus.serial.port", "serial devices are local only"),
    ("serial-source-renamed", lambda: with_source(LINE, name="line2"), "sources.3.modbus.serial.port", "serial devices are local only"),
    # The cloud connection: endpoint and port only into shadow.allowed_endpoints; identity never.
    ("mqtt-endpoint-foreign", lambda: mqtt(endpoint="broker.evil.example"), "publisher.mqtt.endpoint", "allowed_endpoints"),
    ("mqtt-endpoint-case-and-dot", lambda: mqtt(endpoint="BROKER.evil.example."), "publisher.mqtt.endpoint", "allowed_endpoints"),
    ("mqtt-port-on-the-local-endpoint", lambda: mqtt(port=8883), "publisher.mqtt.port", "allowed_endpoints"),
    ("mqtt-allowed-host-other-port", lambda: mqtt(endpoint="127.0.0.1", port=1883), "publisher.mqtt.endpoint", "allowed_endpoints"),
    ("mqtt-endpoint-ipv6", lambda: mqtt(endpoint="2001:db8::1"), "publisher.mqtt.endpoint", "allowed_endpoints"),
    ("mqtt-client-id", lambda: mqtt(client_id="line1-gw"), "publisher.mqtt.client_id", "the client id is the device's identity"),
    ("mqtt-proxy", lambda: mqtt(proxy={"host": "proxy.evil.example", "port": 3128}), "publisher.mqtt.proxy", "proxy"),
    ("mqtt-ca-file", lambda: mqtt(ca_file="/tmp/evil-ca.pem"), "publisher.mqtt.ca_file", "certificate paths"),
    ("mqtt-cert-file", lambda: mqtt(cert_file="/tmp/c.pem"), "publisher.mqtt.cert_file", "certificate paths"),
    ("mqtt-key-file", lambda: mqtt(key_file="/var/lib/gw/audit/a.jsonl"), "publisher.mqtt.key_file", "key paths"),
    ("mqtt-mode", lambda: mqtt(mode="greengrass_ipc"), "publisher.mqtt.mode", "local config file only"),
    ("mqtt-unknown-setting", lambda: mqtt(tls_ciphers="ALL"), "publisher.mqtt.tls_ciphers", "at publisher.mqtt it may set only"),
    # Sources the shadow adds or moves target allowed hosts only.
    ("host-foreign-ipv4", lambda: added(host="192.0.2.10"), "sources.4.modbus.host", "allowed_source_hosts"),
    ("host-foreign-name", lambda: added(host="plc.evil.example"), "sources.4.modbus.host", "allowed_source_hosts"),
    ("host-suffix-of-allowed-name", lambda: added(host="plc-7.plant.local.evil.example"), "sources.4.modbus.host", "allowed_source_hosts"),
    ("host-foreign-ipv6", lambda: added(host="2001:db8::7"), "sources.4.modbus.host", "allowed_source_hosts"),
    ("host-opcua-foreign", lambda: added_opcua("opc.tcp://plc.evil.example:4840"), "sources.4.opcua.endpoint", "allowed_source_hosts"),
    ("host-opcua-foreign-ipv6", lambda: added_opcua("opc.tcp://[2001:db8::1]:4840"), "sources.4.opcua.endpoint", "allowed_source_hosts"),
    ("host-cidr-edge", lambda: added(host="127.0.0.8"), "sources.4.modbus.host", "allowed_source_hosts"),
    ("host-ipv4-mapped-ipv6", lambda: added(host="::ffff:192.0.2.1"), "sources.4.modbus.host", "allowed_source_hosts"),
    ("host-decimal-address", lambda: added(host="2130706433"), "sources.4.modbus.host", "allowed_source_hosts"),
    ("host-short-address", lambda: added(host="127.1"), "sources.4.modbus.host", "allowed_source_hosts"),
    ("host-ipv6-zone", lambda: added(host="fe80::1%eth0"), "sources.4.modbus.host", "allowed_source_hosts"),
    ("host-existing-source-moved", lambda: with_source(BOILER, host="192.0.2.5"), "sources.2.modbus.host", "allowed_source_hosts"),
    ("host-opcua-user-info", lambda: with_source(OVEN, endpoint="opc.tcp://x@127.0.0.3:4840"), "sources.1.opcua.endpoint", "user information"),
    # Security and credentials are bound to the endpoint.
    ("secured-moved-host", lambda: with_source(PRESS, endpoint="opc.tcp://127.0.0.2:4840"), "sources.0.opcua.endpoint", "cannot move it"),
    ("secured-moved-port", lambda: with_source(PRESS, endpoint="opc.tcp://127.0.0.1:4850"), "sources.0.opcua.endpoint", "cannot move it"),
    ("secured-moved-path", lambda: with_source(PRESS, endpoint="opc.tcp://127.0.0.1:4840/rogue"), "sources.0.opcua.endpoint", "cannot move it"),
    ("secured-renamed", lambda: without(PRESS, "security", "auth", name="press2"), "sources.0.opcua.security.mode", "rename of 'press'"),
    ("secured-renamed-keeping-security", lambda: with_source(PRESS, name="press2"), "sources.0.opcua.security", "set in the local config file only"),
    ("weaker-none-on-secured-host", lambda: added_opcua("opc.tcp://127.0.0.1:4841"), "sources.4.opcua.security.mode", "needs security mode SignAndEncrypt"),
    ("weaker-none-same-port-other-path", lambda: added_opcua("opc.tcp://127.0.0.1:4840/other"), "sources.4.opcua.security.mode", "needs security mode"),
    ("weaker-sign-for-signandencrypt", lambda: security(PRESS, mode="Sign"), "sources.0.opcua.security.mode", "SignAndEncrypt"),
    ("trust-on-first-use-switched-on", lambda: security(PRESS, trust_on_first_use=True), "sources.0.opcua.security", "set in the local config file only"),
    ("trust-dir-changed", lambda: security(PRESS, trust_dir="/tmp/attacker-trust"), "sources.0.opcua.security", "set in the local config file only"),
    ("auth-injected", lambda: with_source(OVEN, security={"mode": "Sign"}, auth={"username": "u", "password_file": "/etc/shadow"}), "sources.1.opcua.auth", "set in the local config file only"),
    ("auth-password-source-changed", lambda: with_source(PRESS, auth={"username": "operator", "password_file": "/etc/shadow"}), "sources.0.opcua.auth", "set in the local config file only"),
    # Bounds on what an OPC UA server may send are local: raising them would reopen memory to a hostile server.
    ("opcua-max-message-raised", lambda: with_source(OVEN, max_message_bytes=256 * 1024 * 1024), "sources.1.opcua.max_message_bytes", "bound on what the server may send"),
    ("opcua-max-chunks-raised", lambda: with_source(OVEN, max_chunk_count=8192), "sources.1.opcua.max_chunk_count", "bound on what the server may send"),
    ("opcua-max-value-raised", lambda: with_source(OVEN, max_value_bytes=256 * 1024 * 1024), "sources.1.opcua.max_value_bytes", "bound on what the server may send"),
    # Dead-letter codes from the shadow: permanent refusals only.
    ("dead-letter-quota-exceeded", lambda: codes(0x87, 0x97), "publisher.destinations.0.iotcore.dead_letter_codes", "151 (0x97)"),
    ("dead-letter-unspecified", lambda: codes(0x80), "publisher.destinations.0.iotcore.dead_letter_codes", "128 (0x80)"),
    ("dead-letter-implementation-specific", lambda: codes(0x83), "publisher.destinations.0.iotcore.dead_letter_codes", "131 (0x83)"),
    ("dead-letter-identifier-in-use", lambda: codes(0x91), "publisher.destinations.0.iotcore.dead_letter_codes", "145 (0x91)"),
    ("dead-letter-every-code", lambda: codes(*range(0x80, 0x100)), "publisher.destinations.0.iotcore.dead_letter_codes", "may succeed on a retry"),
    # Documents AWS itself would never hold.
    ("document-over-8-kb", lambda: with_source(OVEN, nodes=[{"alias": f"oven.{i}", "node_id": f"ns=2;s=Oven.{i:04}"} for i in range(300)]), "(document)", "8192 bytes"),
    ("document-over-6-levels", lambda: {"status": nested(6)}, "(document)", "more than 6 levels"),
    ("document-devices-points-form", lambda: with_source(BOILER, points=[], devices=[{"name": "d", "unit_id": 1, "points": [{"alias": "d.x", "address": 0}]}]), "(document)", "more than 6 levels"),
    ("document-100000-levels", lambda: {"sources": nested(100_000)}, "(document)", "more than 6 levels"),
    # Local-only sections and settings, and anything not on the allow-list.
    ("local-gateway", lambda: {"gateway": {"thing_name": "other"}}, "gateway", "thing name"),
    ("local-buffer", lambda: {"buffer": {"max_bytes": 1 << 20, "segment_bytes": 4096}}, "buffer", "this device's disk"),
    ("local-metrics", lambda: {"metrics": {"enabled": True, "host": "0.0.0.0"}}, "metrics", "listening port"),  # noqa: S104
    ("local-audit", lambda: {"audit": {"enabled": False}}, "audit", "audit trail"),
    ("local-shadow-allow-anything", lambda: {"shadow": {"allowed_source_hosts": ["0.0.0.0/0"]}}, "shadow", "local config file"),
    ("local-dead-letter", lambda: {"publisher": {"dead_letter": {"path": "/var/lib/gw/audit/a.jsonl"}}}, "publisher.dead_letter", "dead-letter file"),
    ("local-status-file", lambda: {"status": {"file": "/etc/cron.d/x"}}, "status.file", "a path on this device"),
    ("local-heartbeat-topic", lambda: {"heartbeat": {"topic": "dt/{thing}/audit"}}, "heartbeat.topic", "Last Will"),
    ("local-limits", lambda: {"limits": {"points_per_s": 1_000_000}}, "limits", "limits"),
    ("unknown-top-level-section", lambda: {"exec": "rm -rf /"}, "exec", "at the top level it may set only"),
    ("empty-key", lambda: {"": 1}, '""', "is not a setting the shadow may set"),
    ("unknown-status-setting", lambda: {"status": {"interval_s": 2, "path": "/tmp/x"}}, "status.path", "at status it may set only"),
]  # fmt: skip


def test_the_catalogue_holds_at_least_40_attacks() -> None:
    assert len(HOSTILE) >= 40
    assert len({name for name, *_ in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize(("make", "path", "reason"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_a_hostile_document_is_refused_with_the_path_and_the_reason(
    local: GatewayConfig, make: Callable[[], Any], path: str, reason: str
) -> None:
    errors = refusals(local, make())
    matching = [e for e in errors if e.path == path]
    assert matching, f"no error at {path}: {errors}"
    assert any(reason in e.message for e in matching), matching
    assert all(e.message for e in errors)


# (id, desired document, what must hold of the effective config)
LEGITIMATE: list[tuple[str, Callable[[], Any], Callable[[GatewayConfig], bool]]] = [
    ("nothing", dict, lambda c: True),
    ("the-local-sources-verbatim", lambda: {"sources": sources()}, lambda c: len(c.sources) == 4),
    ("poll-interval", lambda: with_source(BOILER, poll_interval_ms=250), lambda c: c.sources[2].poll_interval_ms == 250),  # type: ignore[union-attr]
    ("nodes-added", lambda: with_source(OVEN, nodes=[{"alias": "oven.t", "node_id": "ns=2;s=Oven.T"}, {"alias": "oven.p", "node_id": "ns=2;s=Oven.P"}]), lambda c: len(c.sources[1].nodes) == 2),  # type: ignore[union-attr]
    ("points-added", lambda: with_source(BOILER, points=[{"alias": "boiler.t", "address": 2}, {"alias": "boiler.p", "address": 3}]), lambda c: len(c.sources[2].points) == 2),  # type: ignore[union-attr]
    ("secured-source-tuned", lambda: with_source(PRESS, publishing_interval_ms=200), lambda c: c.sources[0].publishing_interval_ms == 200),  # type: ignore[union-attr]
    ("secured-source-leaving-trust-out", lambda: without(PRESS, "security", "auth"), lambda c: isinstance(c.sources[0], OpcUaSource) and c.sources[0].security.mode == "SignAndEncrypt"),
    ("serial-line-settings", lambda: with_source(LINE, serial={"port": "/dev/ttyUSB0", "baudrate": 9600}), lambda c: c.sources[3].serial.baudrate == 9600),  # type: ignore[union-attr]
    ("source-moved-port-same-host", lambda: with_source(BOILER, port=5020), lambda c: c.sources[2].port == 5020),  # type: ignore[union-attr]
    ("source-added-in-allowed-cidr", lambda: added(host="127.0.0.5"), lambda c: c.sources[4].name == "pump"),
    ("source-added-on-allowed-name", lambda: added(host="PLC-7.plant.local."), lambda c: len(c.sources) == 5),
    ("source-added-on-allowed-ipv6", lambda: added(host="::1"), lambda c: len(c.sources) == 5),
    ("source-added-ipv4-mapped-allowed", lambda: added(host="::ffff:127.0.0.2"), lambda c: len(c.sources) == 5),
    ("opcua-added-unsecured-host", lambda: added_opcua("opc.tcp://127.0.0.4:4840"), lambda c: len(c.sources) == 5),
    ("source-removed", lambda: {"sources": sources()[1:]}, lambda c: [s.name for s in c.sources] == ["oven", "boiler", "line"]),
    ("iotcore-destination-on-fresh-topic", lambda: {"publisher": {"destinations": [{"type": "iotcore", "name": "cloud"}, {"type": "iotcore", "name": "archive", "topic": "dt2/{thing}/{source}"}]}}, lambda c: len(c.publisher.destinations) == 2),
    ("dead-letter-fewer-codes", lambda: codes(0x90, 0x95), lambda c: c.publisher.destinations[0].dead_letter_codes == (0x90, 0x95)),
    ("endpoint-allowed-by-host", lambda: mqtt(endpoint="backup-ats.iot.eu-west-1.amazonaws.com", port=8883), lambda c: c.publisher.mqtt.port == 8883),
    ("endpoint-allowed-by-host-and-port", lambda: mqtt(endpoint="127.0.0.1", port=8883), lambda c: c.publisher.mqtt.endpoint == "127.0.0.1"),
    ("endpoint-the-local-one-written-out", lambda: mqtt(endpoint=ENDPOINT, port=443), lambda c: c.publisher.mqtt.endpoint == ENDPOINT),
    ("mqtt-timing", lambda: mqtt(keep_alive_s=60, ping_timeout_ms=5000, reconnect_min_s=2, reconnect_max_s=20), lambda c: c.publisher.mqtt.keep_alive_s == 60),
    ("intervals", lambda: {"status": {"interval_s": 5}, "heartbeat": {"interval_s": 30, "shadow_min_interval_s": 600}, "version": 1}, lambda c: c.heartbeat.interval_s == 30),
]  # fmt: skip


@pytest.mark.parametrize(("make", "holds"), [lg[1:] for lg in LEGITIMATE], ids=[lg[0] for lg in LEGITIMATE])
def test_a_legitimate_change_still_applies(
    local: GatewayConfig, make: Callable[[], Any], holds: Callable[[GatewayConfig], bool]
) -> None:
    config = effective_config(local, make())
    assert holds(config)
    assert config.gateway == local.gateway
    assert config.shadow == local.shadow
    assert config.publisher.dead_letter == local.publisher.dead_letter
    assert config.publisher.mqtt.cert_file == local.publisher.mqtt.cert_file


def test_without_an_allow_list_new_sources_stay_on_the_hosts_the_file_names() -> None:
    doc = local_doc()
    del doc["shadow"]
    local = parse_config(doc)
    assert effective_config(local, added(host="127.0.0.3")).sources[4].name == "pump"  # oven's host
    errors = refusals(local, added(host="127.0.0.5"))
    assert [e.path for e in errors] == ["sources.4.modbus.host"]
    assert "(127.0.0.1, 127.0.0.3)" in errors[0].message
    assert [e.path for e in refusals(local, mqtt(endpoint="127.0.0.1", port=8883))] == ["publisher.mqtt.endpoint"]


def test_an_oversize_document_is_refused_alone_before_any_model_sees_it(local: GatewayConfig) -> None:
    doc = {"gateway": {"thing_name": "x"}, "sources": 5, "blob": "x" * 9000}
    errors = refusals(local, doc)
    assert [e.path for e in errors] == ["(document)"]
    assert "over the AWS IoT shadow document limit of 8192 bytes" in errors[0].message


def test_a_document_of_exactly_six_levels_and_8_kb_is_judged_on_its_content(local: GatewayConfig) -> None:
    six = {"status": {"x": {"x": {"x": {"x": [1]}}}}}  # desired, status, x, x, x, x's list: 6
    assert [e.path for e in refusals(local, six)] == ["status.x"]
    doc: dict[str, Any] = {"version": 1, "status": {"interval_s": 3}}
    pad = 8192 - len(json.dumps(doc, separators=(",", ":"))) - len(',"sources":') - 2
    doc["sources"] = "x" * pad
    assert len(json.dumps(doc, separators=(",", ":")).encode()) == 8192
    assert [e.path for e in refusals(local, doc)] == ["sources"]  # the model's error, not the size's


def test_every_refusal_says_not_allowed_in_the_shadow(local: GatewayConfig) -> None:
    for _, make, path, _ in HOSTILE:
        errors = [e for e in refusals(local, make()) if e.path == path]
        policy = [e for e in errors if "not allowed in the shadow" in e.message]
        assert policy or path.endswith("serial.port"), errors  # a URL as a serial port may be the model's


# ---- edge-gateway validate --config FILE --desired DOC.json ------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(local_doc()))
    return path


def validate(config_file: Path, desired: Any, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = config_file.parent / "desired.json"
    path.write_text(desired if isinstance(desired, str) else json.dumps(desired))
    code = main(["validate", "--config", str(config_file), "--desired", str(path)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_validate_prints_every_error_with_its_path_and_exits_2(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desired = with_serial(LINE, "/dev/ttyS1") | mqtt(endpoint="broker.evil.example")
    desired["gateway"] = {"thing_name": "x"}
    code, out, err = validate(config_file, desired, capsys)
    assert code == 2
    assert out == ""
    assert "would reject it" in err
    for path in ("sources.3.modbus.serial.port", "publisher.mqtt.endpoint", "gateway"):
        assert f"  {path}: " in err


def test_validate_accepts_an_update_request_and_says_what_would_change(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = {"state": {"desired": with_source(BOILER, poll_interval_ms=250) | {"heartbeat": {"interval_s": 30}}}}
    code, out, err = validate(config_file, request, capsys)
    assert (code, err) == (0, "")
    assert out.count("\n") == 1
    assert "accepted" in out
    assert "sources changed: boiler; status intervals changed" in out
    code, out, _ = validate(config_file, {}, capsys)
    assert code == 0
    assert "no change" in out


@pytest.mark.parametrize(
    ("text", "says"), [("{", "not valid JSON"), ('{"a": NaN}', "not valid JSON"), ("[1]", "must be a JSON object")]
)
def test_validate_refuses_what_is_not_a_desired_document(
    config_file: Path, capsys: pytest.CaptureFixture[str], text: str, says: str
) -> None:
    code, _, err = validate(config_file, text, capsys)
    assert code == 2
    assert says in err


def test_validate_names_a_desired_file_it_cannot_read(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = config_file.parent / "nope.json"
    assert main(["validate", "--config", str(config_file), "--desired", str(missing)]) == 2
    assert f"{missing}: cannot read" in capsys.readouterr().err
