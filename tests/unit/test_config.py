import json
from pathlib import Path

import pytest
import yaml

from edge_gateway.cli import main
from edge_gateway.config.model import load_config, parse_config
from edge_gateway.errors import ConfigError
from simulators.pki import generate_pki


def valid_doc() -> dict[str, object]:
    return {
        "gateway": {"thing_name": "line1-gw"},
        "sources": [
            {
                "type": "opcua",
                "name": "press",
                "endpoint": "opc.tcp://127.0.0.1:4840",
                "nodes": [{"alias": "press.counter", "node_id": "ns=2;s=Line1.Counter"}],
            },
            {
                "type": "modbus",
                "name": "boiler",
                "host": "127.0.0.1",
                "points": [{"alias": "boiler.t", "address": 2, "data_type": "int16", "scale": 0.1}],
            },
        ],
        "publisher": {
            "mqtt": {"endpoint": "example-ats.iot.eu-west-1.amazonaws.com", "cert_file": "c.pem", "key_file": "k.pem"},
            "destinations": [{"type": "iotcore", "name": "cloud"}],
        },
    }


def test_defaults_follow_iot_core_and_greengrass_facts() -> None:
    cfg = parse_config(valid_doc())
    assert cfg.publisher.mqtt.port == 443
    assert cfg.client_id == "line1-gw-gateway"  # never the thing name the nucleus uses
    assert 30 <= cfg.publisher.mqtt.keep_alive_s <= 1200
    d = cfg.publisher.destinations[0]
    assert d.max_message_bytes < 128_000
    assert d.topic == "dt/{thing}/{source}"
    assert cfg.buffer.when_full == "drop_oldest"


def test_every_error_is_reported_with_its_path() -> None:
    doc = valid_doc()
    doc["sources"][1]["points"][0]["data_type"] = "int12"  # type: ignore[index]
    doc["sources"][0]["endpoint"] = "http://x"  # type: ignore[index]
    doc["publisher"]["mqtt"]["port"] = 70000  # type: ignore[index]
    doc["gateway"]["colour"] = "blue"  # type: ignore[index]
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "test.yaml")
    paths = {e.path for e in info.value.errors}
    assert "sources.1.modbus.points.0.data_type" in paths
    assert "sources.0.opcua.endpoint" in paths
    assert "publisher.mqtt.port" in paths
    assert "gateway.colour" in paths
    assert "test.yaml" in str(info.value)


def test_duplicate_names_and_bad_topics_are_refused() -> None:
    doc = valid_doc()
    doc["sources"][1]["name"] = "press"  # type: ignore[index]
    doc["publisher"]["destinations"][0]["topic"] = "dt/{thing}/{plant}/#"  # type: ignore[index]
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    text = str(info.value)
    assert "duplicate name(s): press" in text
    assert "unknown placeholder(s) ['plant']" in text


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "gw.json").write_text(json.dumps(valid_doc()))
    cfg = load_config(tmp_path / "gw.json")
    assert cfg.publisher.mqtt.cert_file == tmp_path / "c.pem"
    assert cfg.buffer_path == tmp_path / "var" / "buffer"


def test_validate_command_names_the_field_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = valid_doc()
    doc["buffer"] = {"max_bytes": 10}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    assert main(["validate", "--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "buffer.max_bytes: Input should be greater than or equal to 1048576" in err

    # validate also checks the files the config names: give it a real certificate and key.
    pki = generate_pki(tmp_path / "pki", thing_name="line1-gw")
    good = valid_doc()
    good["publisher"]["mqtt"] |= {"cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}  # type: ignore[index]
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))
    assert main(["validate", "--config", str(tmp_path / "good.yaml")]) == 0
    assert "valid (2 source(s), 1 destination(s), thing line1-gw)" in capsys.readouterr().out


def test_unparseable_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("gateway: [unclosed")
    with pytest.raises(ConfigError, match="not valid yaml"):
        load_config(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_reconnect_bounds_must_be_ordered() -> None:
    doc = valid_doc()
    doc["sources"][0]["reconnect_min_s"] = 90  # type: ignore[index]
    doc["publisher"]["mqtt"]["reconnect_min_s"] = 500  # type: ignore[index]
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    text = str(info.value)
    assert "sources.0.opcua: Value error, reconnect_min_s (90.0) must not exceed reconnect_max_s (60.0)" in text
    assert "publisher.mqtt: Value error, reconnect_min_s (500.0) must not exceed reconnect_max_s (30.0)" in text


def test_destinations_of_both_types_with_basic_ingest_topics_and_their_checks() -> None:
    doc = valid_doc()
    doc["publisher"]["destinations"] = [  # type: ignore[index]
        {"type": "iotcore", "name": "cloud", "topic": "$aws/rules/plant_ingest/dt/{thing}/{source}"},
        {"type": "sitewise", "name": "sitewise"},
    ]
    cfg = parse_config(doc)
    iot, sw = cfg.publisher.destinations
    assert iot.topic.startswith("$aws/rules/plant_ingest/")
    assert sw.type == "sitewise"
    assert sw.topic == "$aws/rules/edge_sitewise_{type}/{thing}/{source}"
    assert sw.alias == "/{thing}/{source}/{point}"
    assert sw.dead_letter_codes == (135, 144, 149, 153)
    assert cfg.dead_letter_path == Path("var/dead-letter.jsonl")
    assert cfg.status_topic == "dt/line1-gw/status"
    doc["publisher"]["destinations"] = [  # type: ignore[index]
        {"type": "sitewise", "name": "sw", "alias": "/{plant}/{point}", "dead_letter_codes": [135, 16]},
    ]
    doc["publisher"]["mqtt"]["proxy"] = {"host": "proxy.plant", "port": 3128, "username": "gw"}  # type: ignore[index]
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    text = str(info.value)
    assert "publisher.destinations.0.sitewise.alias: Value error, unknown placeholder(s) ['plant']" in text
    assert "[16] are not MQTT 5 failure reason codes" in text
    assert "publisher.mqtt.proxy: Value error, username and password_file go together" in text


def test_the_documented_example_is_valid() -> None:
    cfg = load_config(Path(__file__).parents[2] / "examples" / "gateway.yaml")
    assert [d.type for d in cfg.publisher.destinations] == ["iotcore", "sitewise"]
