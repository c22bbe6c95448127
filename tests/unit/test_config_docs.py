"""docs/configuration.md documents every field of every config model, and the shadow schema matches."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from edge_gateway.cli import main
from edge_gateway.config import model as config
from edge_gateway.control.desired import LOCAL_ONLY

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


def models() -> list[type[BaseModel]]:
    return [
        m
        for m in vars(config).values()
        if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == config.__name__ and m.model_fields
    ]


def test_every_field_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [f"{m.__name__}.{name}" for m in models() for name in m.model_fields if f"`{name}`" not in text]
    assert not missing, f"fields missing from docs/configuration.md: {missing}"
    assert len(models()) >= 12


def test_every_local_only_key_is_named_in_the_shadow_section() -> None:
    shadow_part = DOC.read_text(encoding="utf-8").split("## Device shadow", 1)[1]
    for path in LOCAL_ONLY:
        assert f"`{'.'.join(path)}`" in shadow_part


def test_schema_command_prints_the_shadow_document_schema(capsys: object) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    assert set(schema["properties"]) == {"version", "sources", "publisher", "status", "heartbeat"}
    assert schema["additionalProperties"] is False
    assert set(schema["$defs"]["ShadowPublisher"]["properties"]) == {"destinations", "mqtt"}
    assert set(schema["$defs"]["ShadowStatus"]["properties"]) == {"interval_s"}
    heartbeat = set(schema["$defs"]["ShadowHeartbeat"]["properties"])
    assert heartbeat == {"interval_s", "shadow_min_interval_s", "shadow_report"}
    mqtt = set(schema["$defs"]["ShadowMqtt"]["properties"])
    assert {"endpoint", "port", "keep_alive_s"} <= mqtt
    assert not mqtt & {"cert_file", "key_file", "ca_file", "client_id", "proxy"}  # secrets are not part of it
    assert "MqttSettings" not in schema["$defs"]
    assert "HttpProxySettings" not in schema["$defs"]
    assert {"ModbusTcpSource", "OpcUaSource", "IotCoreDestination", "SiteWiseDestination"} <= set(schema["$defs"])
