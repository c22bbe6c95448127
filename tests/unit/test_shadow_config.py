"""The shadow's share of the config: validation with every error's path, local-only keys, diff, persistence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_gateway.config.diff import config_hash, diff
from edge_gateway.config.model import GatewayConfig, parse_config
from edge_gateway.control.desired import AppliedConfig, boot_config, effective_config
from edge_gateway.errors import ConfigError
from tests.unit.test_config import valid_doc


@pytest.fixture
def local() -> GatewayConfig:
    return parse_config(valid_doc())


def modbus(name: str = "boiler", poll_ms: int = 1000) -> dict[str, Any]:
    return {
        "type": "modbus",
        "name": name,
        "host": "127.0.0.1",
        "poll_interval_ms": poll_ms,
        "points": [{"alias": f"{name}.t", "address": 2, "data_type": "int16"}],
    }


def errors_of(local: GatewayConfig, desired: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        effective_config(local, desired)
    return {e.path: e.message for e in info.value.errors}


def test_an_empty_desired_state_runs_the_local_file(local: GatewayConfig) -> None:
    assert effective_config(local, {}) == local


def test_sources_are_replaced_and_status_intervals_merged(local: GatewayConfig) -> None:
    cfg = effective_config(local, {"sources": [modbus(poll_ms=250)], "heartbeat": {"interval_s": 15}})
    assert [s.name for s in cfg.sources] == ["boiler"]
    assert cfg.sources[0].poll_interval_ms == 250  # type: ignore[union-attr]
    assert cfg.heartbeat.interval_s == 15
    assert cfg.status.interval_s == local.status.interval_s  # not named: kept
    assert cfg.publisher.mqtt == local.publisher.mqtt  # identity untouched


def test_destinations_replace_the_files_and_keep_its_mqtt(local: GatewayConfig) -> None:
    dests = [{"type": "iotcore", "name": "cloud"}, {"type": "sitewise", "name": "sw"}]
    cfg = effective_config(local, {"publisher": {"destinations": dests}})
    assert [d.name for d in cfg.publisher.destinations] == ["cloud", "sw"]
    assert cfg.publisher.mqtt == local.publisher.mqtt


def test_three_errors_are_all_reported_with_their_paths(local: GatewayConfig) -> None:
    bad = modbus(poll_ms=1)
    bad["points"][0]["data_type"] = "int12"
    errors = errors_of(local, {"sources": [bad, modbus("x"), {"type": "opcua", "name": "p", "endpoint": "http://x"}]})
    assert set(errors) == {
        "sources.0.modbus.poll_interval_ms",
        "sources.0.modbus.points.0.data_type",
        "sources.2.opcua.endpoint",
        "sources.2.opcua.nodes",
    }
    assert "greater than or equal to 10" in errors["sources.0.modbus.poll_interval_ms"]


def test_identity_and_secrets_are_refused_with_a_reason(local: GatewayConfig) -> None:
    errors = errors_of(
        local,
        {
            "gateway": {"thing_name": "other"},
            "publisher": {
                "mqtt": {"key_file": "/tmp/k.pem", "endpoint": "other.example"},
                "destinations": [{"type": "iotcore", "name": "c"}],
            },
            "heartbeat": {"topic": "x/{thing}", "interval_s": 5},
            "buffer": {"max_bytes": 1},
        },
    )
    # The endpoint too: it may change only into the local shadow.allowed_endpoints, empty here.
    assert set(errors) == {"gateway", "publisher.mqtt.key_file", "publisher.mqtt.endpoint", "heartbeat.topic", "buffer"}
    assert "identity and secrets never come from the shadow" in errors["publisher.mqtt.key_file"]
    assert "Last Will" in errors["heartbeat.topic"]


def test_mqtt_connection_settings_merge_onto_the_files() -> None:
    # The endpoint may change only into the local file's shadow.allowed_endpoints (docs/security.md).
    local = parse_config(valid_doc() | {"shadow": {"allowed_endpoints": ["127.0.0.1:8883"]}})
    cfg = effective_config(local, {"publisher": {"mqtt": {"endpoint": "127.0.0.1", "port": 8883}}})
    assert (cfg.publisher.mqtt.endpoint, cfg.publisher.mqtt.port) == ("127.0.0.1", 8883)
    assert cfg.publisher.mqtt.cert_file == local.publisher.mqtt.cert_file
    assert cfg.publisher.destinations == local.publisher.destinations
    assert diff(local, cfg).mqtt_changed
    assert "mqtt connection changed" in diff(local, cfg).describe()


def test_unknown_keys_and_duplicate_names_are_errors(local: GatewayConfig) -> None:
    errors = errors_of(local, {"sourcez": [], "sources": [modbus(), modbus()]})
    assert "sourcez" in errors
    assert "duplicate name(s): boiler" in errors["sources"]


@pytest.mark.parametrize("desired", [None, [], "sources", 7])
def test_a_desired_state_that_is_not_an_object_is_refused(local: GatewayConfig, desired: Any) -> None:
    assert "desired state must be a JSON object" in errors_of(local, desired)["(document)"]


def test_diff_names_what_changed(local: GatewayConfig) -> None:
    new = effective_config(
        local,
        {
            "sources": [local.sources[0].model_dump(mode="json"), modbus(poll_ms=200), modbus("pump")],
            "publisher": {"destinations": [{"type": "iotcore", "name": "cloud"}, {"type": "iotcore", "name": "b"}]},
        },
    )
    d = diff(local, new)
    assert d.sources_changed == ("boiler",)
    assert d.sources_added == ("pump",)
    assert d.sources_removed == ()
    assert d.destinations_added == ("b",)
    assert d.destinations_changed == ()
    assert not d.status_changed
    assert "sources changed: boiler" in d.describe()
    assert diff(local, local).empty


def test_the_hash_follows_the_settings_not_the_order_of_keys(local: GatewayConfig) -> None:
    a = effective_config(local, {"sources": [modbus(poll_ms=250)]})
    b = effective_config(local, {"sources": [dict(reversed(list(modbus(poll_ms=250).items())))]})
    c = effective_config(local, {"sources": [modbus(poll_ms=251)]})
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert config_hash(a).startswith("sha256:")


def test_applied_config_survives_a_restart_and_a_garbled_file_is_set_aside(
    local: GatewayConfig, tmp_path: Path
) -> None:
    path = tmp_path / "shadow" / "applied.json"
    assert AppliedConfig.load(path) is None
    desired = {"sources": [modbus(poll_ms=250)]}
    AppliedConfig(7, desired, "sha256:x").save(path)
    saved = AppliedConfig.load(path)
    assert saved == AppliedConfig(7, desired, "sha256:x")
    cfg, used = boot_config(local, saved)
    assert used == saved
    assert cfg.sources[0].poll_interval_ms == 250  # type: ignore[union-attr]

    path.write_text('{"version": 7, "desired": ')  # torn by hand: the gateway must still start
    assert AppliedConfig.load(path) is None
    assert not path.exists()
    assert path.with_suffix(".unreadable").exists()


def test_a_saved_config_that_no_longer_fits_the_local_file_is_not_run(local: GatewayConfig) -> None:
    saved = AppliedConfig(3, {"sources": [{"type": "modbus", "name": "b"}]}, "sha256:y")
    cfg, used = boot_config(local, saved)
    assert cfg == local
    assert used is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)
keys = st.sampled_from(["sources", "publisher", "status", "version", "gateway", "buffer", "x"])


@settings(max_examples=1000, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.one_of(json_values, st.dictionaries(keys, json_values, max_size=4)))
def test_any_json_gives_a_config_or_a_config_error(local: GatewayConfig, desired: Any) -> None:
    errors = []
    try:
        cfg = effective_config(local, desired)
    except ConfigError as exc:
        errors = exc.errors
    else:
        assert cfg.publisher.mqtt == local.publisher.mqtt
        assert cfg.gateway == local.gateway
        return
    assert errors
    assert all(e.path and e.message for e in errors)
    json.dumps([[e.path, e.message] for e in errors])  # reportable as JSON
