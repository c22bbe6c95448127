"""What a shadow may set: the allow-list of paths, the document budget, and the checks on the cloud side.

The device shadow is a trust boundary (docs/security.md): anyone with ``iot:UpdateThingShadow`` writes it.
So what it may set is an explicit ALLOW-LIST (``ALLOWED``), not a list of exceptions. A key of the desired
document that is not on it is refused with its path and the reason (``LOCAL_ONLY`` gives the reason for the
keys an operator is likely to try; anything else, including any top-level section added later such as
``limits``, gets "the shadow may set only ..."). The refused keys never reach the merged document.

Contract:
- ``document_errors(desired)`` runs first, on the raw JSON, before anything is parsed into models: a desired
  state over AWS's 8 KB document limit or nested deeper than AWS's depth limit is refused as ``(document)``.
  The walk is iterative: a document nested a million levels deep costs no recursion.
- ``allowed_part(desired)`` returns the part of the document on the allow-list and an error per key that is
  not; values are not judged here (the models and the checks below do that).
- ``endpoint_errors`` and ``dead_letter_errors`` compare the merged, validated config with the local file:
  the MQTT endpoint and port move only into ``shadow.allowed_endpoints``; a destination's
  ``dead_letter_codes`` from the shadow hold only permanent refusals (or codes the local file's destination
  of the same name already has).
Every message starts with "not allowed in the shadow" (operators and tests look for it) and says what to do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from edge_gateway.config.model import GatewayConfig, MqttSettings
from edge_gateway.errors import FieldError

REFUSED: Final = "not allowed in the shadow"

# AWS IoT Device Shadow limits (developer guide, "Diagnosing problems with shadows": "The device's shadow
# supports 8 KB of data only ... Only the data for desired and reported state ... counts toward the limit";
# "Device Shadow error messages": 400 "JSON contains too many levels of nesting; maximum is 6"; the quota
# table's "maximum depth of JSON device state documents" of 8 counts from the request's root, i.e. the
# ``state`` and ``desired`` objects plus 6). A desired state beyond either was never accepted by the real
# service: it did not come from AWS, so it is refused before anything else looks at it.
MAX_DESIRED_BYTES: Final = 8 * 1024  # compact JSON, UTF-8; desired alone, reported counts on top
MAX_DESIRED_DEPTH: Final = 6  # objects and arrays, the desired object itself being level 1

_SECRETS = "identity and secrets never come from the shadow"
_ENDPOINT = (
    "the cloud endpoint is local only: the shadow may move the connection only to an endpoint listed in "
    "the local file's shadow.allowed_endpoints"
)
# Reasons for local-only keys, by path (docs/configuration.md, "Device shadow", names each of them).
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
    ("shadow",): "which shadow configures the gateway, and what it may change, is set in the local config file",
    ("audit",): "the audit trail is a local control of this device: set it in the local config file",
    ("limits",): "the limits bound what the shadow may ask of this device and the plant: set them in the local "
    "config file",
}

# The allow-list: a key maps to True (the whole value may come from the shadow; lists are judged by the
# models and by the source and destination checks) or to the allow-list of the object below it.
_MQTT_ALLOWED: Final[dict[str, Any]] = dict.fromkeys(
    (
        "endpoint",  # only into shadow.allowed_endpoints (endpoint_errors)
        "port",  # likewise
        "keep_alive_s",
        "ping_timeout_ms",
        "ack_timeout_s",
        "reconnect_min_s",
        "reconnect_max_s",
        "iot_core_flow_control",
    ),
    True,
)
ALLOWED: Final[dict[str, Any]] = {
    "version": True,
    "sources": True,  # hosts, serial devices, security and credentials: control/sources.py
    "publisher": {"destinations": True, "mqtt": _MQTT_ALLOWED},
    "status": {"interval_s": True},
    "heartbeat": {"interval_s": True, "shadow_min_interval_s": True, "shadow_report": True},
}

# PUBACK reason codes that are refusals for good (MQTT 5.0, 3.4.2.1; 0x95 is how a packet over the broker's
# maximum is reported): not authorized, topic name invalid, packet too large, payload format invalid. Every
# other failure code may pass: 0x80 unspecified and 0x83 implementation specific (IoT Core also answers
# transient faults with them), 0x91 packet identifier in use, 0x97 quota exceeded (throttling). Dead-lettering
# them would divert data a retry delivers into a file that rotates away.
PERMANENT_CODES: Final = frozenset({0x87, 0x90, 0x95, 0x99})


def document_errors(desired: Mapping[str, Any]) -> list[FieldError]:
    """AWS's limits on the raw desired state, checked before it is parsed (depth first: it bounds the size
    computation's recursion)."""
    if _depth_over(desired, MAX_DESIRED_DEPTH):
        return [
            FieldError(
                "(document)",
                f"{REFUSED}: the desired state is nested more than {MAX_DESIRED_DEPTH} levels deep (desired itself "
                "being the first), beyond the AWS IoT shadow limit; AWS never sends such a document: flatten it "
                "(devices[].points[] and groups[].nodes[] belong in the local config file)",
            )
        ]
    try:
        size = len(json.dumps(desired, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError) as exc:
        return [FieldError("(document)", f"{REFUSED}: the desired state is not a JSON document ({exc})")]
    if size > MAX_DESIRED_BYTES:
        return [
            FieldError(
                "(document)",
                f"{REFUSED}: the desired state is {size} bytes, over the AWS IoT shadow document limit of "
                f"{MAX_DESIRED_BYTES} bytes (8 KB); keep long point and node lists in the local config file",
            )
        ]
    return []


def _depth_over(doc: Any, limit: int) -> bool:  # noqa: ANN401 - raw JSON
    """True when objects and arrays nest more than ``limit`` levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, Mapping) else node if isinstance(node, list) else None
        if children is None:
            continue
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children if isinstance(child, Mapping | list))
    return False


def allowed_part(desired: Mapping[str, Any]) -> tuple[dict[str, Any], list[FieldError]]:
    """The keys of ``desired`` on the allow-list, and an error naming each key that is not."""
    errors: list[FieldError] = []
    return _walk(desired, ALLOWED, (), errors), errors


def _walk(
    doc: Mapping[str, Any], allowed: Mapping[str, Any], path: tuple[str, ...], errors: list[FieldError]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        here = (*path, str(key) or '""')  # an empty key still gets a path the operator can read
        rule = allowed.get(key)
        if rule is None:
            errors.append(FieldError(".".join(here), f"{REFUSED}: {_reason(here, allowed)}"))
        elif rule is True or not isinstance(value, Mapping):
            out[key] = value  # a wrong type under an object is the model's error to report
        else:
            out[key] = _walk(value, rule, here, errors)
    return out


def _reason(path: tuple[str, ...], allowed: Mapping[str, Any]) -> str:
    for n in range(len(path), 0, -1):
        if path[:n] in LOCAL_ONLY:
            return LOCAL_ONLY[path[:n]]
    where = ".".join(path[:-1]) or "the top level"
    return (
        f"{path[-1]!r} is not a setting the shadow may set; at {where} it may set only "
        f"{', '.join(sorted(allowed))}; everything else is set in the local config file"
    )


def endpoint_errors(local: GatewayConfig, new: MqttSettings) -> list[FieldError]:
    """The MQTT endpoint and port stay the local file's unless ``shadow.allowed_endpoints`` lists the new one
    ("host": any port on it; "host:port": that port only)."""
    old = local.publisher.mqtt
    if (_norm_host(old.endpoint), old.port) == (_norm_host(new.endpoint), new.port):  # the same host, as written
        return []
    for entry in local.shadow.allowed_endpoints:
        host, port = split_host_port(entry)
        if _norm_host(host) == _norm_host(new.endpoint) and port in (None, new.port):
            return []
    field = "endpoint" if _norm_host(old.endpoint) != _norm_host(new.endpoint) else "port"
    allowed = ", ".join(local.shadow.allowed_endpoints) or "none"
    return [
        FieldError(
            f"publisher.mqtt.{field}",
            f"{REFUSED}: {new.endpoint}:{new.port} is not the local file's {old.endpoint}:{old.port}; "
            f"{_ENDPOINT} (allowed: {allowed}); add it there or leave endpoint and port out of the shadow",
        )
    ]


def split_host_port(entry: str) -> tuple[str, int | None]:
    """ "host", "host:port", "[v6]", "[v6]:port" or a bare IPv6 address; None: no port given."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if not rest:
            return host, None
        port = rest[1:] if rest.startswith(":") else "-"
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:  # a name, or an IPv6 address without brackets (no port)
        return entry, None
    return host, int(port) if port.isascii() and port.isdigit() else -1  # a malformed port matches no port


def _norm_host(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")


def dead_letter_errors(local: GatewayConfig, config: GatewayConfig) -> list[FieldError]:
    """A destination may dead-letter only permanent refusals, or codes the local file's destination of the same
    name already dead-letters (a desired document that copies the file's destinations validates)."""
    mine = {d.name: set(d.dead_letter_codes) for d in local.publisher.destinations}
    errors = []
    for i, dest in enumerate(config.publisher.destinations):
        retryable = sorted(set(dest.dead_letter_codes) - PERMANENT_CODES - mine.get(dest.name, set()))
        if retryable:
            codes = ", ".join(f"{c} (0x{c:02X})" for c in retryable)
            permanent = ", ".join(str(c) for c in sorted(PERMANENT_CODES))
            errors.append(
                FieldError(
                    f"publisher.destinations.{i}.{dest.type}.dead_letter_codes",
                    f"{REFUSED}: {codes} may succeed on a retry, so the shadow cannot send them to the dead-letter "
                    f"file; from the shadow only permanent refusals ({permanent}) or the local file's own codes "
                    "for this destination",
                )
            )
    return errors
