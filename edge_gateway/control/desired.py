"""The configuration the device shadow may set: validation, merge with the local file, diff, persistence.

The shadow's ``desired`` state is the same document as the local config file, restricted to what may be
changed remotely: ``sources``, ``publisher.destinations``, ``publisher.mqtt`` connection settings
(endpoint, port, timeouts, backoff, flow control), ``status.interval_s``, ``heartbeat`` intervals and
``version``. Objects merge into the local file's key by key; lists (sources, destinations) replace it.
Identity, secrets and this device's disk layout stay local: ``gateway``, ``buffer`` (sized for this disk,
reopening it needs a restart), the MQTT client id, certificate and key paths and proxy,
``publisher.dead_letter``, ``status.file``, ``heartbeat.topic`` (the presence topic is the Last Will),
``metrics`` (a listening port on this machine), ``audit`` and ``shadow``. A shadow that sets any of them is rejected
with that reason.

``effective_config(local, desired)`` validates the *whole* result before anything is touched and raises
``ConfigError`` with every problem as ``FieldError(path, message)``; paths are those of the shadow
document (``sources.1.modbus.poll_interval_ms``); config/diff.py says what changed, so only that restarts.
``AppliedConfig`` is the last good shadow config, written atomically (temp file,
fsync, rename, fsync dir) so a gateway that boots without network runs what it ran before.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_gateway.config.model import GatewayConfig, field_errors
from edge_gateway.errors import ConfigError, FieldError
from edge_gateway.util.files import write_json_durably

_log = logging.getLogger(__name__)

ORIGIN = "device shadow"

_SECRETS = "identity and secrets never come from the shadow"
# Keys a shadow may not set, by path, with the reason the operator sees.
LOCAL_ONLY: dict[tuple[str, ...], str] = {
    ("gateway",): f"thing name and data directory are set in the local config file only ({_SECRETS})",
    ("buffer",): "buffer settings size this device's disk and need a restart: set them in the local config file",
    ("publisher", "mqtt", "mode"): "how the gateway reaches the cloud (its own connection or the Greengrass "
    "nucleus) is set in the local config file only",
    ("publisher", "mqtt", "client_id"): f"the client id is the device's identity ({_SECRETS})",
    ("publisher", "mqtt", "ca_file"): f"certificate paths are set in the local config file only ({_SECRETS})",
    ("publisher", "mqtt", "cert_file"): f"certificate paths are set in the local config file only ({_SECRETS})",
    ("publisher", "mqtt", "key_file"): f"key paths are set in the local config file only ({_SECRETS})",
    ("publisher", "mqtt", "proxy"): f"the proxy and its credentials are set in the local config file only ({_SECRETS})",
    ("publisher", "dead_letter"): "the dead-letter file is on this device's disk: set it in the local config file",
    ("status", "file"): "a path on this device: set it in the local config file",
    ("heartbeat", "topic"): "the presence topic is the connection's Last Will: set it in the local config file",
    ("metrics",): "a listening port on this machine is opened from the local config file only",
    ("shadow",): "which shadow configures the gateway is set in the local config file",
    ("audit",): "the audit trail is a local control of this device: set it in the local config file",
}


def local_only_errors(desired: Mapping[str, Any]) -> list[FieldError]:
    errors = []
    for path, reason in LOCAL_ONLY.items():
        node: Any = desired
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
            if node is None:
                break
        else:
            errors.append(FieldError(".".join(path), f"not allowed in the shadow: {reason}"))
    return errors


def effective_config(local: GatewayConfig, desired: Any) -> GatewayConfig:  # noqa: ANN401 - raw JSON
    """The local config with the shadow's ``desired`` applied, validated as a whole; else ``ConfigError``."""
    if not isinstance(desired, Mapping):
        kind = "null" if desired is None else type(desired).__name__
        raise ConfigError(ORIGIN, [FieldError("(document)", f"desired state must be a JSON object, not {kind}")])
    errors = local_only_errors(desired)
    merged = _overlay(local.model_dump(mode="json"), _with_local_trust(local, desired), ())
    try:
        config = GatewayConfig.model_validate(merged)
    except ValidationError as exc:
        errors += field_errors(exc)
    else:
        errors += source_trust_errors(local, config)
    if errors:
        raise ConfigError(ORIGIN, errors)
    return config


# Per source type: settings that are this device's trust decisions and secret locations. A shadow may
# carry them only as the local file has them for a source of the same name (a desired document that copies
# the file's sources validates); it can never introduce or change them.
SOURCE_LOCAL_ONLY: dict[str, tuple[str, ...]] = {"opcua": ("security", "auth")}


def _with_local_trust(local: GatewayConfig, desired: Mapping[str, Any]) -> Mapping[str, Any]:
    """``desired`` with each source that leaves its trust settings out taking them from the local file's
    source of the same name and type (the shadow's lists replace the file's, these must not get lost)."""
    sources = desired.get("sources")
    if not isinstance(sources, list):
        return desired
    mine = {s.name: s for s in local.sources}
    out: list[Any] = []
    for item in sources:
        source = item
        if isinstance(item, Mapping):
            same = mine.get(str(item.get("name")))
            keys = SOURCE_LOCAL_ONLY.get(str(item.get("type")), ())
            if same is not None and same.type == item.get("type"):
                kept = same.model_dump(mode="json", include=set(keys))
                source = {**{k: v for k, v in kept.items() if k not in item}, **item}
        out.append(source)
    return {**desired, "sources": out}


def source_trust_errors(local: GatewayConfig, config: GatewayConfig) -> list[FieldError]:
    mine = {s.name: s for s in local.sources}
    errors = []
    for i, source in enumerate(config.sources):
        for key in SOURCE_LOCAL_ONLY.get(source.type, ()):
            same = mine.get(source.name)
            expected = getattr(same, key) if same is not None and same.type == source.type else None
            if expected is None:
                expected = type(source).model_fields[key].get_default(call_default_factory=True)
            if getattr(source, key) != expected:
                errors.append(
                    FieldError(
                        f"sources.{i}.{source.type}.{key}",
                        f"not allowed in the shadow: {key} of an OPC UA source (certificates, trust list, "
                        "credentials) is set in the local config file only; a source of the same name there may "
                        "carry it",
                    )
                )
    return errors


def _overlay(base: dict[str, Any], patch: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """``base`` with ``patch`` on top: objects merge key by key, anything else (lists too) replaces;
    local-only keys are skipped (``local_only_errors`` reports them)."""
    out = dict(base)
    for key, value in patch.items():
        here = (*path, key)
        if here in LOCAL_ONLY:
            continue
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            out[key] = _overlay(base[key], value, here)
        else:
            out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class AppliedConfig:
    """The last shadow config that was applied and held (confirmed), as persisted on disk."""

    version: int  # 0: nothing from the shadow, the local file alone
    desired: dict[str, Any]
    config_hash: str
    # sha256 of a desired document that was rolled back: not applied again until desired changes.
    rolled_back: str | None = None

    def save(self, path: Path) -> None:
        doc = {
            "version": self.version,
            "desired": self.desired,
            "config_hash": self.config_hash,
            "rolled_back": self.rolled_back,
        }
        write_json_durably(path, doc)

    @classmethod
    def load(cls, path: Path) -> AppliedConfig | None:
        """The saved config, or None when there is none or it cannot be read (logged, file set aside)."""
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            rolled_back = doc.get("rolled_back")
            return cls(
                int(doc["version"]),
                dict(doc["desired"]),
                str(doc["config_hash"]),
                None if rolled_back is None else str(rolled_back),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = path.with_suffix(".unreadable")
            with contextlib.suppress(OSError):
                path.replace(aside)
            _log.warning("cannot read the saved shadow config %s (%s); moved it to %s", path, exc, aside)
            return None


def boot_config(local: GatewayConfig, saved: AppliedConfig | None) -> tuple[GatewayConfig, AppliedConfig | None]:
    """What to run at start: the saved shadow config on top of the local file, when it still validates."""
    if saved is None:
        return local, None
    try:
        return effective_config(local, saved.desired), saved
    except ConfigError as exc:
        _log.warning(
            "the saved shadow config (version %d) no longer fits the local config file, running the file alone: %s",
            saved.version,
            exc,
        )
        return local, None


def shadow_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the shadow's ``desired`` document: the config file's schema cut down
    to what a shadow may set."""
    schema = GatewayConfig.model_json_schema()
    defs: dict[str, Any] = schema["$defs"]
    props = schema["properties"]

    def only(def_name: str, path: tuple[str, ...], title: str) -> dict[str, Any]:
        d: dict[str, Any] = copy.deepcopy(defs[def_name])
        d["properties"] = {k: v for k, v in d["properties"].items() if (*path, k) not in LOCAL_ONLY}
        d.pop("required", None)  # merged onto the local file: nothing is required
        d["title"] = title
        return d

    defs["ShadowMqtt"] = only("MqttSettings", ("publisher", "mqtt"), "ShadowMqtt")
    defs["ShadowPublisher"] = only("PublisherSettings", ("publisher",), "ShadowPublisher")
    defs["ShadowPublisher"]["properties"]["mqtt"] = {"$ref": "#/$defs/ShadowMqtt"}
    defs["ShadowStatus"] = only("StatusSettings", ("status",), "ShadowStatus")
    defs["ShadowHeartbeat"] = only("HeartbeatSettings", ("heartbeat",), "ShadowHeartbeat")
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
        "description": "Sections left out keep the local config file's values; identity, secrets and disk "
        "settings are local only.",
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
