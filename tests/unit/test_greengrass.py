"""edge_gateway.config.greengrass: the config document plus what the nucleus and the component configuration give."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_gateway.cli import main
from edge_gateway.config import greengrass
from edge_gateway.errors import ConfigError

ENDPOINT = "abcdefghij1234-ats.iot.eu-west-1.amazonaws.com"


def document() -> dict[str, Any]:
    """What a plant writes: sources and destinations, nothing the nucleus or the deployment knows."""
    return {
        "sources": [
            {
                "type": "modbus",
                "name": "boiler",
                "host": "10.0.4.20",
                "points": [{"alias": "boiler.t", "address": 2, "data_type": "int16", "scale": 0.1}],
            }
        ],
        "publisher": {"destinations": [{"type": "iotcore", "name": "cloud"}]},
    }


def nucleus_env(**extra: str) -> dict[str, str]:
    """The environment recipe.yaml's Run step gets, with the recipe's default configuration."""
    env = {
        "AWS_IOT_THING_NAME": "line1-gw",
        "GG_ROOT_CA_PATH": "/greengrass/v2/rootCA.pem",
        "AWS_REGION": "eu-west-1",
        "EDGE_GATEWAY_THING_NAME": "line1-gw",
        "EDGE_GATEWAY_WORK_DIR": "/greengrass/v2/work/com.example.EdgeGateway",
        "EDGE_GATEWAY_CONFIG_FILE": "",
        "EDGE_GATEWAY_CONFIG_JSON": "{}",
        "EDGE_GATEWAY_ENDPOINT": ENDPOINT,
        "EDGE_GATEWAY_PORT": "443",
        "EDGE_GATEWAY_CERT_FILE": "/etc/edge-gateway/gateway.cert.pem",
        "EDGE_GATEWAY_KEY_FILE": "/etc/edge-gateway/gateway.private.key",
        "EDGE_GATEWAY_CA_FILE": "",
    }
    env.update(extra)
    return env


def test_the_nucleus_and_the_component_configuration_fill_what_the_document_leaves_out() -> None:
    doc, notes = greengrass.apply_environment(document(), nucleus_env())
    assert doc["gateway"] == {"thing_name": "line1-gw", "data_dir": "/greengrass/v2/work/com.example.EdgeGateway/data"}
    assert doc["publisher"]["mqtt"] == {
        "endpoint": ENDPOINT,
        "port": 443,
        "cert_file": "/etc/edge-gateway/gateway.cert.pem",
        "key_file": "/etc/edge-gateway/gateway.private.key",
        "ca_file": "/greengrass/v2/rootCA.pem",
    }
    assert doc["sources"] == document()["sources"]
    assert all(n.level == logging.INFO for n in notes)
    assert "gateway.thing_name = line1-gw (from the Greengrass core's thing name)" in [n.message for n in notes]


def test_the_document_wins_and_an_overridden_deployment_value_is_reported() -> None:
    doc = document()
    doc["gateway"] = {"thing_name": "line1-gw", "data_dir": "/data/gw"}
    doc["publisher"]["mqtt"] = {"endpoint": "other-ats.iot.eu-west-1.amazonaws.com", "ca_file": "/etc/ca.pem"}
    out, notes = greengrass.apply_environment(doc, nucleus_env())
    assert out["gateway"]["data_dir"] == "/data/gw"
    assert out["publisher"]["mqtt"]["endpoint"] == "other-ats.iot.eu-west-1.amazonaws.com"
    assert out["publisher"]["mqtt"]["ca_file"] == "/etc/ca.pem"
    warnings = [n.message for n in notes if n.level == logging.WARNING]
    assert warnings == [
        "publisher.mqtt.endpoint: the config document's value is used, not the component configuration's endpoint",
        "publisher.mqtt.ca_file: the config document's value is used, not the nucleus' root CA (GG_ROOT_CA_PATH)",
        "gateway.data_dir: the config document's value is used, not the component's work directory",
    ]


def test_the_component_configuration_comes_before_the_nucleus() -> None:
    env = nucleus_env(EDGE_GATEWAY_CA_FILE="/etc/edge-gateway/ca.pem")
    doc, notes = greengrass.apply_environment(document(), env)
    assert doc["publisher"]["mqtt"]["ca_file"] == "/etc/edge-gateway/ca.pem"
    assert "publisher.mqtt.ca_file = /etc/edge-gateway/ca.pem (from the component configuration's caFile)" in [
        n.message for n in notes
    ]
    assert all(n.level == logging.INFO for n in notes)


def test_the_recipe_thing_name_comes_before_the_nucleus_variable() -> None:
    env = nucleus_env(EDGE_GATEWAY_THING_NAME="{iot:thingName}")  # a nucleus older than 2.3 leaves it
    assert greengrass.thing_name(env) == "line1-gw"
    env = nucleus_env(EDGE_GATEWAY_THING_NAME="line2-gw")
    assert greengrass.thing_name(env) == "line2-gw"


@pytest.mark.parametrize("unset", ["", "  ", "null", "{configuration:/endpoint}"])
def test_empty_null_and_unreplaced_variables_mean_not_set(unset: str) -> None:
    doc, _ = greengrass.apply_environment(document(), nucleus_env(EDGE_GATEWAY_ENDPOINT=unset))
    assert "endpoint" not in doc["publisher"]["mqtt"]


@pytest.mark.parametrize(("given", "port"), [("443", 443), ("8883", 8883), ("8883.0", 8883)])
def test_port_is_a_string_in_the_component_configuration(given: str, port: int) -> None:
    doc, _ = greengrass.apply_environment(document(), nucleus_env(EDGE_GATEWAY_PORT=given))
    assert doc["publisher"]["mqtt"]["port"] == port


@pytest.mark.parametrize("bad", ["https", "0", "70000", "44.5"])
def test_a_port_that_is_not_a_port_names_the_component_configuration_key(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        greengrass.apply_environment(document(), nucleus_env(EDGE_GATEWAY_PORT=bad))
    assert [e.path for e in err.value.errors] == ["port"]
    assert repr(bad) in err.value.errors[0].message


def test_the_core_thing_name_as_client_id_is_refused() -> None:
    doc = document()
    doc["publisher"]["mqtt"] = {"client_id": "line1-gw"}
    with pytest.raises(ConfigError) as err:
        greengrass.apply_environment(doc, nucleus_env())
    assert err.value.errors[0].path == "publisher.mqtt.client_id"
    assert "the nucleus connects with" in err.value.errors[0].message


def test_an_endpoint_in_another_region_than_the_core_is_a_warning() -> None:
    _, notes = greengrass.apply_environment(
        document(), nucleus_env(EDGE_GATEWAY_ENDPOINT="abc-ats.iot.us-east-1.amazonaws.com")
    )
    assert any(n.level == logging.WARNING and "us-east-1" in n.message and "eu-west-1" in n.message for n in notes)


def test_another_thing_than_the_core_is_a_warning() -> None:
    doc = document()
    doc["gateway"] = {"thing_name": "line9-gw"}
    out, notes = greengrass.apply_environment(doc, nucleus_env())
    assert out["gateway"]["thing_name"] == "line9-gw"
    assert [n.message for n in notes if n.level == logging.WARNING] == [
        "gateway.thing_name: the config document's value is used, not the Greengrass core's thing name"
    ]


def test_inline_document_restores_integers_greengrass_turned_into_floats() -> None:
    doc = document()
    doc["sources"][0]["points"][0]["address"] = 2.0
    doc["sources"][0]["port"] = 502.0
    inline = greengrass.inline_document({"EDGE_GATEWAY_CONFIG_JSON": json.dumps(doc)})
    assert inline["sources"][0]["points"][0] == {"alias": "boiler.t", "address": 2, "data_type": "int16", "scale": 0.1}
    assert type(inline["sources"][0]["port"]) is int


@pytest.mark.parametrize(("text", "message"), [("[1]", "must be an object"), ("{", "not valid JSON")])
def test_inline_document_must_be_a_json_object(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        greengrass.inline_document({"EDGE_GATEWAY_CONFIG_JSON": text})
    assert err.value.errors[0].path == "gatewayConfig"
    assert message in err.value.errors[0].message


def test_overlay_merges_objects_and_replaces_lists() -> None:
    base = {"publisher": {"mqtt": {"endpoint": "a", "port": 8883}, "destinations": [{"name": "a"}, {"name": "b"}]}}
    top = {"publisher": {"mqtt": {"port": 443}, "destinations": [{"name": "c"}]}}
    assert greengrass.overlay(base, top) == {
        "publisher": {"mqtt": {"endpoint": "a", "port": 443}, "destinations": [{"name": "c"}]}
    }


def test_load_a_file_with_the_inline_document_on_top(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    doc = document()
    doc["buffer"] = {"path": "buffer-here"}
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    top = {"sources": [{**document()["sources"][0], "name": "kiln"}]}
    env = nucleus_env(EDGE_GATEWAY_CONFIG_FILE=str(path), EDGE_GATEWAY_CONFIG_JSON=json.dumps(top))
    config, _ = greengrass.load(env)
    assert [s.name for s in config.sources] == ["kiln"]
    assert config.gateway.thing_name == "line1-gw"
    assert config.client_id == "line1-gw-gateway"
    assert config.publisher.mqtt.ca_file == Path("/greengrass/v2/rootCA.pem")
    assert config.buffer_path == tmp_path / "buffer-here"  # relative to the file
    assert config.status_path == Path("/greengrass/v2/work/com.example.EdgeGateway/data/status.json")


def test_load_the_inline_document_alone_relative_to_the_work_directory() -> None:
    doc = document()
    doc["buffer"] = {"path": "buffer-here"}
    config, _ = greengrass.load(nucleus_env(EDGE_GATEWAY_CONFIG_JSON=json.dumps(doc)))
    assert config.buffer_path == Path("/greengrass/v2/work/com.example.EdgeGateway/buffer-here")


def test_an_explicit_file_beats_the_component_configuration(tmp_path: Path) -> None:
    chosen = tmp_path / "chosen.json"
    chosen.write_text(json.dumps(document()), encoding="utf-8")
    config, _ = greengrass.load(nucleus_env(EDGE_GATEWAY_CONFIG_FILE=str(tmp_path / "missing.yaml")), chosen)
    assert [s.name for s in config.sources] == ["boiler"]


def test_load_without_any_document_says_what_to_set() -> None:
    with pytest.raises(ConfigError) as err:
        greengrass.load(nucleus_env())
    assert "set gatewayConfig" in str(err.value)
    assert "configFile" in str(err.value)


def test_load_reports_every_problem_with_what_to_do(tmp_path: Path) -> None:
    doc = document()
    doc["sources"][0]["poll_interval_ms"] = 1
    env = nucleus_env(EDGE_GATEWAY_ENDPOINT="", EDGE_GATEWAY_CONFIG_JSON=json.dumps(doc))
    with pytest.raises(ConfigError) as err:
        greengrass.load(env)
    errors = {e.path: e.message for e in err.value.errors}
    assert (
        "aws iot describe-endpoint --endpoint-type iot:Data-ATS --region eu-west-1" in errors["publisher.mqtt.endpoint"]
    )
    assert "sources.0.modbus.poll_interval_ms" in errors


def test_load_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        greengrass.load(nucleus_env(EDGE_GATEWAY_CONFIG_FILE=str(tmp_path / "missing.yaml")))
    assert err.value.origin == str(tmp_path / "missing.yaml")
    assert err.value.errors[0].message.startswith("cannot read")


def test_cli_run_greengrass_exits_2_with_the_reason(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    for name, value in nucleus_env().items():
        monkeypatch.setenv(name, value)
    assert main(["run", "--greengrass"]) == 2
    assert "no gateway configuration" in capsys.readouterr().err


def test_cli_run_needs_a_config_without_greengrass(capsys: Any) -> None:
    assert main(["run"]) == 2
    assert "run needs --config FILE" in capsys.readouterr().err
