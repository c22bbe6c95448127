"""Running as an AWS IoT Greengrass v2 component: the config document plus what the nucleus knows.

``edge-gateway run --greengrass`` (what recipe.yaml's Run step starts) builds its configuration here.
The nucleus sets ``AWS_IOT_THING_NAME``, ``GG_ROOT_CA_PATH`` (nucleus >= 2.5.5) and ``AWS_REGION``; the
recipe's ``Run.Setenv`` passes the component configuration as ``EDGE_GATEWAY_*`` variables (values never
go through the shell): ``EDGE_GATEWAY_THING_NAME`` ({iot:thingName}), ``EDGE_GATEWAY_WORK_DIR``
({work:path}), ``EDGE_GATEWAY_CONFIG_FILE`` (configFile), ``EDGE_GATEWAY_CONFIG_JSON`` (gatewayConfig,
the document inline, as JSON), ``EDGE_GATEWAY_ENDPOINT`` / ``_PORT`` / ``_CERT_FILE`` / ``_KEY_FILE`` /
``_CA_FILE`` (endpoint, port, certFile, keyFile, caFile).

Precedence, highest first:

1. the device shadow, at run time, for what it may set (docs/configuration.md);
2. the config document: the inline ``gatewayConfig`` on top of ``configFile`` (objects merge key by key,
   lists and values replace);
3. the component configuration's ``endpoint``, ``port``, ``certFile``, ``keyFile``, ``caFile``;
4. the nucleus: thing name, root CA (``GG_ROOT_CA_PATH``), data directory ``<work path>/data`` (it is
   kept across component versions, and so is the buffer);
5. the gateway's own defaults; here also one IoT Core destination ``cloud`` when the document names none,
   so a fleet's ``gatewayConfig`` holds only what every gateway shares (``shadow.allowed_source_hosts``):
   one deployment for a thing group starts every gateway with no sources, and each takes its own from its
   named shadow (docs/deployment.md, "A fleet"). A document with nothing at all is refused as a mistake.

Levels 3 and 4 only fill in what the document leaves out; a value they would have set but the document
overrides is reported, so a deployment change that cannot take effect is never silent. An empty value,
``null``, or a recipe variable the nucleus left unreplaced (``{configuration:/x}`` when the key is
missing) means "not set". Greengrass may hand numbers back as floats (its configuration is JSON):
integral floats in the inline document become integers again.

``apply_environment`` and ``inline_document`` are pure; ``load`` reads the config file and validates the
whole result, raising ``ConfigError`` with every problem. Relative paths are relative to the config file
when there is one, else to the component's work directory.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edge_gateway.config.model import GatewayConfig, parse_config
from edge_gateway.errors import ConfigError, FieldError

ORIGIN = "Greengrass component configuration"

# Set by the nucleus for every component.
THING_NAME = "AWS_IOT_THING_NAME"
IPC_SOCKET = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
IPC_TOKEN = "SVCUID"  # noqa: S105 - the variable's name, not a secret
ROOT_CA = "GG_ROOT_CA_PATH"
REGION = "AWS_REGION"
# Set by recipe.yaml (Run.Setenv).
RECIPE_THING_NAME = "EDGE_GATEWAY_THING_NAME"
WORK_DIR = "EDGE_GATEWAY_WORK_DIR"
CONFIG_FILE = "EDGE_GATEWAY_CONFIG_FILE"
CONFIG_JSON = "EDGE_GATEWAY_CONFIG_JSON"
ENDPOINT = "EDGE_GATEWAY_ENDPOINT"
PORT = "EDGE_GATEWAY_PORT"
CERT_FILE = "EDGE_GATEWAY_CERT_FILE"
KEY_FILE = "EDGE_GATEWAY_KEY_FILE"
CA_FILE = "EDGE_GATEWAY_CA_FILE"

# The component configuration key behind each variable, for messages.
_COMPONENT_KEY = {
    CONFIG_FILE: "configFile",
    CONFIG_JSON: "gatewayConfig",
    ENDPOINT: "endpoint",
    PORT: "port",
    CERT_FILE: "certFile",
    KEY_FILE: "keyFile",
    CA_FILE: "caFile",
}
# What a document without publisher.destinations publishes to: IoT Core on the default topic dt/<thing>/<source>.
DEFAULT_DESTINATION = {"type": "iotcore", "name": "cloud"}
_UNREPLACED = re.compile(r"\{[\w.-]+:[^}]*\}")
_ENDPOINT_REGION = re.compile(r"\.iot\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
_MAX_PORT = 65535


@dataclass(frozen=True, slots=True)
class Note:
    """Where a setting came from, or why a component configuration value was not used: logged at start."""

    level: int
    message: str


def setting(env: Mapping[str, str], name: str) -> str | None:
    """The value of ``name``, or None when it is empty, ``null`` or an unreplaced recipe variable."""
    value = env.get(name, "").strip()
    if not value or value == "null" or _UNREPLACED.fullmatch(value):
        return None
    return value


def thing_name(env: Mapping[str, str]) -> str | None:
    """The core device's thing name: the recipe's ``{iot:thingName}``, else the nucleus' variable."""
    return setting(env, RECIPE_THING_NAME) or setting(env, THING_NAME)


def inline_document(env: Mapping[str, str]) -> dict[str, Any]:
    """The component configuration's ``gatewayConfig`` (``{}`` when not set); ``ConfigError`` if not an object."""
    text = setting(env, CONFIG_JSON)
    if text is None:
        return {}
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(ORIGIN, [FieldError("gatewayConfig", f"not valid JSON: {exc}")]) from exc
    if not isinstance(doc, dict):
        kind = "null" if doc is None else type(doc).__name__
        raise ConfigError(ORIGIN, [FieldError("gatewayConfig", f"must be an object (the config document), not {kind}")])
    restored: dict[str, Any] = _integral_floats_to_int(doc)
    return restored


def overlay(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` on ``base``: objects merge key by key; lists and values replace."""
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        out[key] = overlay(below, value) if isinstance(value, Mapping) and isinstance(below, Mapping) else value
    return out


def apply_environment(doc: Mapping[str, Any], env: Mapping[str, str]) -> tuple[dict[str, Any], list[Note]]:
    """The document with levels 3 and 4 filled in where it leaves a value out, and what was done.

    Raises ``ConfigError`` for component configuration that cannot be right (a port that is not a number,
    a client id equal to the core's thing name)."""
    out = json.loads(json.dumps(doc))  # a deep copy; the document is plain JSON data
    notes: list[Note] = []
    errors: list[FieldError] = []

    def fill(path: tuple[str, ...], value: object | None, source: str) -> None:
        if value is None:
            return
        node = out
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                if child is not None:
                    return  # not an object: validation reports it with its path
                child = node[key] = {}
            node = child
        where = ".".join(path)
        if path[-1] in node:
            if node[path[-1]] != value:
                notes.append(Note(logging.WARNING, f"{where}: the config document's value is used, not {source}"))
            return
        node[path[-1]] = value
        notes.append(Note(logging.INFO, f"{where} = {value} (from {source})"))

    if _ipc_mode(out):  # the nucleus holds the connection: endpoint and certificates are not used
        notes.append(Note(logging.INFO, "publisher.mqtt.mode is greengrass_ipc: publishing through the nucleus"))
    else:
        _fill_connection(fill, env, errors)
    core = thing_name(env)
    fill(("gateway", "thing_name"), core, "the Greengrass core's thing name")
    work = setting(env, WORK_DIR)
    fill(("gateway", "data_dir"), f"{work}/data" if work else None, "the component's work directory")
    notes += _default_destination(out)

    notes += _cross_checks(out, env, core, errors)
    if errors:
        raise ConfigError(ORIGIN, errors)
    return out, notes


def _default_destination(doc: dict[str, Any]) -> list[Note]:
    """No ``publisher.destinations`` in the document: one IoT Core destination, so that a fleet's shared
    ``gatewayConfig`` need not name one; the shadow may replace it."""
    publisher = doc.setdefault("publisher", {})
    if not isinstance(publisher, dict) or "destinations" in publisher:
        return []  # set, or not an object: validation reports it with its path
    publisher["destinations"] = [dict(DEFAULT_DESTINATION)]
    return [Note(logging.INFO, f"publisher.destinations = [{DEFAULT_DESTINATION}] (the component's default)")]


def _ipc_mode(doc: Mapping[str, Any]) -> bool:
    publisher = doc.get("publisher")
    mqtt = publisher.get("mqtt") if isinstance(publisher, Mapping) else None
    return isinstance(mqtt, Mapping) and mqtt.get("mode") == "greengrass_ipc"


def ipc_environment(env: Mapping[str, str]) -> tuple[str, str]:
    """The nucleus socket and this component's SVCUID token, which the nucleus gives every component process
    (``publisher.mqtt.mode: greengrass_ipc``); ``ConfigError`` saying what is missing."""
    socket_path, token = env.get(IPC_SOCKET, "").strip(), env.get(IPC_TOKEN, "").strip()
    missing = [name for name, value in ((IPC_SOCKET, socket_path), (IPC_TOKEN, token)) if not value]
    if missing:
        message = (
            f"{' and '.join(missing)} not set: mode greengrass_ipc talks to the Greengrass nucleus, which sets them "
            "for the component's processes; run the gateway as the component (recipe.yaml), or use mode direct"
        )
        raise ConfigError("the environment", [FieldError("publisher.mqtt.mode", message)])
    return socket_path, token


def _fill_connection(
    fill: Callable[[tuple[str, ...], object | None, str], None], env: Mapping[str, str], errors: list[FieldError]
) -> None:
    mqtt = ("publisher", "mqtt")
    fill((*mqtt, "endpoint"), setting(env, ENDPOINT), "the component configuration's endpoint")
    fill((*mqtt, "port"), _port(setting(env, PORT), errors), "the component configuration's port")
    fill((*mqtt, "cert_file"), setting(env, CERT_FILE), "the component configuration's certFile")
    fill((*mqtt, "key_file"), setting(env, KEY_FILE), "the component configuration's keyFile")
    if ca_file := setting(env, CA_FILE):
        fill((*mqtt, "ca_file"), ca_file, "the component configuration's caFile")
    else:
        fill((*mqtt, "ca_file"), setting(env, ROOT_CA), f"the nucleus' root CA ({ROOT_CA})")


def _port(value: str | None, errors: list[FieldError]) -> int | None:
    if value is None:
        return None
    try:
        number = float(value)  # "443", or "443.0" from a configuration that held a number
    except ValueError:
        number = -1.0
    port = int(number) if number.is_integer() else -1
    if not 1 <= port <= _MAX_PORT:
        errors.append(FieldError("port", f"must be a TCP port number (1..{_MAX_PORT}), not {value!r}"))
        return None
    return port


def _cross_checks(
    doc: dict[str, Any], env: Mapping[str, str], core: str | None, errors: list[FieldError]
) -> list[Note]:
    notes: list[Note] = []
    mqtt = doc.get("publisher", {}).get("mqtt", {}) if isinstance(doc.get("publisher"), dict) else {}
    if core and isinstance(mqtt, dict) and mqtt.get("client_id") == core:
        errors.append(
            FieldError(
                "publisher.mqtt.client_id",
                f"{core!r} is the Greengrass core's thing name, which the nucleus connects with: IoT Core would "
                "drop one connection for the other, over and over. Leave client_id out (default <thing>-gateway)",
            )
        )
    region = setting(env, REGION)
    endpoint = mqtt.get("endpoint") if isinstance(mqtt, dict) else None
    match = _ENDPOINT_REGION.search(endpoint) if isinstance(endpoint, str) else None
    if region and match and match.group(1) != region:
        notes.append(
            Note(
                logging.WARNING,
                f"endpoint {endpoint} is in {match.group(1)}, this core runs in {region} (AWS_REGION): "
                "the gateway's data goes to another region than the core's",
            )
        )
    return notes


def _hints(env: Mapping[str, str]) -> dict[str, str]:
    """What to do about a required value that nothing set, by field path."""
    region = setting(env, REGION)
    describe = "aws iot describe-endpoint --endpoint-type iot:Data-ATS" + (f" --region {region}" if region else "")
    return {
        "publisher.mqtt.endpoint": f"not set: set the component configuration's endpoint (`{describe}`)",
        "publisher.mqtt.cert_file": "not set: set the component configuration's certFile (the gateway's certificate)",
        "publisher.mqtt.key_file": "not set: set the component configuration's keyFile (the gateway's private key)",
        "gateway.thing_name": f"not set and no thing name from the nucleus ({THING_NAME})",
    }


def _integral_floats_to_int(value: Any) -> Any:  # noqa: ANN401 - raw JSON
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_floats_to_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_to_int(v) for v in value]
    return value


def read_document(path: Path) -> dict[str, Any]:
    """The raw document of a config file (YAML, or JSON by its suffix); ``ConfigError`` when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [FieldError("(file)", f"cannot read: {exc.strerror}")]) from exc
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), [FieldError("(file)", f"not valid {path.suffix[1:] or 'YAML'}: {exc}")]) from exc
    if not isinstance(doc, dict):
        raise ConfigError(str(path), [FieldError("(document)", "must be a mapping (the config document)")])
    return doc


def load(env: Mapping[str, str], config_file: Path | None = None) -> tuple[GatewayConfig, list[Note]]:
    """The gateway config under Greengrass: ``config_file`` (else ``configFile``), ``gatewayConfig`` on top,
    the component configuration and the nucleus filling in the rest; validated as a whole."""
    path = config_file or (Path(value) if (value := setting(env, CONFIG_FILE)) else None)
    inline = inline_document(env)
    if path is None and not inline:
        raise ConfigError(
            ORIGIN,
            [
                FieldError(
                    "(document)",
                    "no gateway configuration: set gatewayConfig (the config document inline) or configFile "
                    "(a YAML or JSON file the component user can read) in the deployment; for a fleet whose "
                    "gateways take their sources from their shadows, gatewayConfig needs only "
                    "shadow.allowed_source_hosts (docs/deployment.md, 'A fleet')",
                )
            ],
        )
    base = read_document(path) if path else {}
    origin = " + ".join(([str(path)] if path else []) + (["gatewayConfig"] if inline else []))
    doc, notes = apply_environment(overlay(base, inline), env)
    work = setting(env, WORK_DIR)
    relative_to = path.parent if path else Path(work) if work else Path()
    try:
        config = parse_config(doc, f"{origin} (Greengrass)", base_dir=relative_to)
    except ConfigError as exc:
        hints = _hints(env)
        errors = [
            FieldError(e.path, hints[e.path]) if e.path in hints and e.message == "Field required" else e
            for e in exc.errors
        ]
        raise ConfigError(exc.origin, errors) from exc
    return config, notes
