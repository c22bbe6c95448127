"""JSON Schema (draft 2020-12) of the shadow's ``desired`` document: the config file's schema cut down to the
allow-list of control/policy.py, so ``edge-gateway schema`` never offers what the gateway would refuse."""

from __future__ import annotations

import copy
import json
from typing import Any

from edge_gateway.config.model import GatewayConfig
from edge_gateway.control.policy import ALLOWED


def shadow_schema() -> dict[str, Any]:
    schema = GatewayConfig.model_json_schema()
    defs: dict[str, Any] = schema["$defs"]
    props = schema["properties"]

    def only(def_name: str, allowed: dict[str, Any], title: str) -> dict[str, Any]:
        d: dict[str, Any] = copy.deepcopy(defs[def_name])
        d["properties"] = {k: v for k, v in d["properties"].items() if k in allowed}
        d.pop("required", None)  # merged onto the local file: nothing is required
        d["title"] = title
        return d

    defs["ShadowMqtt"] = only("MqttSettings", ALLOWED["publisher"]["mqtt"], "ShadowMqtt")
    defs["ShadowPublisher"] = only("PublisherSettings", ALLOWED["publisher"], "ShadowPublisher")
    defs["ShadowPublisher"]["properties"]["mqtt"] = {"$ref": "#/$defs/ShadowMqtt"}
    defs["ShadowStatus"] = only("StatusSettings", ALLOWED["status"], "ShadowStatus")
    defs["ShadowHeartbeat"] = only("HeartbeatSettings", ALLOWED["heartbeat"], "ShadowHeartbeat")
    shadow_props = {
        "version": props["version"],
        "sources": props["sources"],
        "publisher": {"$ref": "#/$defs/ShadowPublisher"},
        "status": {"$ref": "#/$defs/ShadowStatus"},
        "heartbeat": {"$ref": "#/$defs/ShadowHeartbeat"},
    }
    out: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "edge-gateway shadow desired state",
        "description": "Sections left out keep the local config file's values; only the settings listed here "
        "may come from the shadow (docs/configuration.md, 'Device shadow'); the endpoint and port only into "
        "the local file's shadow.allowed_endpoints.",
        "type": "object",
        "additionalProperties": False,
        "properties": shadow_props,
    }
    used: dict[str, Any] = {}
    pending = [shadow_props]
    while pending:
        text = json.dumps(pending.pop())
        for name, definition in defs.items():
            if f'"#/$defs/{name}"' in text and name not in used:
                used[name] = definition
                pending.append(definition)
    out["$defs"] = dict(sorted(used.items()))
    return out
