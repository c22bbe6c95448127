"""IPC mode: the config switch and the one place nucleus errors become PublishError or shadow refusals."""

from __future__ import annotations

from typing import Any

import pytest
from awsiot.greengrasscoreipc import model

from edge_gateway.config.model import GatewayConfig, parse_config
from edge_gateway.errors import ConfigError
from edge_gateway.publish.transport.greengrass_ipc import NOT_AUTHORIZED, _publish_error, shadow_rejection


def document(mqtt: dict[str, Any]) -> dict[str, Any]:
    return {
        "gateway": {"thing_name": "line1-gw"},
        "sources": [{"type": "modbus", "name": "b", "host": "plc", "points": [{"alias": "a", "address": 0}]}],
        "publisher": {"mqtt": mqtt, "destinations": [{"type": "iotcore", "name": "cloud"}]},
    }


def test_ipc_mode_needs_no_connection_settings_and_uses_the_nucleus_client_id() -> None:
    config: GatewayConfig = parse_config(document({"mode": "greengrass_ipc"}))
    assert config.publisher.mqtt.ipc
    assert config.client_id == "line1-gw"


def test_direct_mode_still_requires_endpoint_certificate_and_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(document({"mode": "direct", "cert_file": "c.pem"}))
    assert [str(e) for e in err.value.errors] == [
        "publisher.mqtt.endpoint: Field required",
        "publisher.mqtt.key_file: Field required",
    ]


def test_unauthorized_is_a_135_refusal_that_dead_letter_codes_judge() -> None:
    error = _publish_error(model.UnauthorizedError(message="Not Authorized"), "PublishToIoTCore to 'x'")
    assert (error.reason_code, error.retryable) == (NOT_AUTHORIZED, True)
    assert "not authorized (Not Authorized)" in str(error)
    assert "accessControl" in str(error)


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (model.InvalidArgumentsError(message="Invalid QoS value: 2"), False),
        (model.ServiceError(message="spooler full"), True),
        (TimeoutError(), True),
        (RuntimeError("socket is closed"), True),
    ],
)
def test_other_errors_are_retryable_unless_the_request_itself_is_invalid(exc: Exception, retryable: bool) -> None:
    error = _publish_error(exc, "PublishToIoTCore")
    assert error.retryable is retryable
    assert error.reason_code is None


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (model.ResourceNotFoundError(message="No shadow found", resource_type="shadow"), 404),
        (model.ConflictError(message="Version conflict"), 409),
        (model.InvalidArgumentsError(message="Invalid JSON"), 400),
        (model.UnauthorizedError(message="Principal x is not authorized"), 401),
        (model.ServiceError(message="boom"), 500),
    ],
)
def test_shadow_errors_become_the_mqtt_services_rejected_documents(exc: Exception, code: int) -> None:
    doc = shadow_rejection(exc, "gw-1")
    assert doc is not None
    assert (doc["code"], doc["message"], doc["clientToken"]) == (code, exc.message, "gw-1")  # type: ignore[attr-defined]


def test_a_connection_error_is_no_shadow_answer() -> None:
    assert shadow_rejection(RuntimeError("socket is closed"), "gw-1") is None
