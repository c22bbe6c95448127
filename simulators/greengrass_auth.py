"""Greengrass IPC authorization as the nucleus does it, for ``simulators.greengrass_ipc``.

A component's policy is its recipe's ``accessControl``::

    {destination: {policyId: {"policyDescription": ..., "operations": [op, ...], "resources": [res, ...]}}}

The principal is the component whose recipe holds the policy. A request is allowed when one policy of that
component for the destination names the operation (or ``*``) and a resource matching the request's
resource. Matching follows the nucleus' ``WildcardTrie``:

- every destination: ``*`` matches any characters (``/`` included); ``${*}``, ``${$}``, ``${?}`` are the
  literal characters; an unescaped ``?`` or another ``${`` sequence makes the policy invalid;
- ``aws.greengrass.ipc.mqttproxy`` only (MQTT_STYLE lookup): ``+`` as a whole level matches one level and
  ``#`` as the last level matches any rest (``a/#`` also matches ``a``); elsewhere they are literal.
  Pub/sub and ShadowManager resources are plain strings: a ``+`` in a policy matches only a ``+``.

Choices of the stand-in: an unknown destination or an operation the destination does not register raises
ValueError at construction (the nucleus logs it and the grant never matches); ``{iot:thingName}`` in a
resource is replaced by the thing name given (the nucleus does so with ``interpolateComponentConfiguration``).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

MQTT_PROXY: Final = "aws.greengrass.ipc.mqttproxy"
PUBSUB: Final = "aws.greengrass.ipc.pubsub"
SHADOW_MANAGER: Final = "aws.greengrass.ShadowManager"
NAMESPACE: Final = "aws.greengrass#"
PUBLISH_TO_IOT_CORE: Final = NAMESPACE + "PublishToIoTCore"
SUBSCRIBE_TO_TOPIC: Final = NAMESPACE + "SubscribeToTopic"
GET_THING_SHADOW: Final = NAMESPACE + "GetThingShadow"
UPDATE_THING_SHADOW: Final = NAMESPACE + "UpdateThingShadow"
# Every operation of the GreengrassCoreIPC model (awsiotsdk 1.31.0; a unit test compares with the SDK's).
MODEL_OPERATIONS: Final = frozenset(
    NAMESPACE + name
    for name in (
        "AuthorizeClientDeviceAction",
        "CancelLocalDeployment",
        "CreateDebugPassword",
        "CreateLocalDeployment",
        "DeferComponentUpdate",
        "DeleteThingShadow",
        "GetClientDeviceAuthToken",
        "GetComponentDetails",
        "GetConfiguration",
        "GetLocalDeploymentStatus",
        "GetSecretValue",
        "GetThingShadow",
        "ListComponents",
        "ListLocalDeployments",
        "ListNamedShadowsForThing",
        "PauseComponent",
        "PublishToIoTCore",
        "PublishToTopic",
        "PutComponentMetric",
        "RestartComponent",
        "ResumeComponent",
        "SendConfigurationValidityReport",
        "StopComponent",
        "SubscribeToCertificateUpdates",
        "SubscribeToComponentUpdates",
        "SubscribeToConfigurationUpdate",
        "SubscribeToIoTCore",
        "SubscribeToIoTCoreConnectionStatus",
        "SubscribeToTopic",
        "SubscribeToValidateConfigurationUpdates",
        "UpdateConfiguration",
        "UpdateState",
        "UpdateThingShadow",
        "ValidateAuthorizationToken",
        "VerifyClientDeviceIdentity",
    )
)
# Destination -> (operations a policy may name, MQTT-style resources?), as the nucleus registers them.
DESTINATIONS: Final[Mapping[str, tuple[frozenset[str], bool]]] = {
    MQTT_PROXY: (frozenset({PUBLISH_TO_IOT_CORE, NAMESPACE + "SubscribeToIoTCore", "*"}), True),
    PUBSUB: (frozenset({NAMESPACE + "PublishToTopic", SUBSCRIBE_TO_TOPIC, "*"}), False),
    SHADOW_MANAGER: (
        frozenset(
            {
                GET_THING_SHADOW,
                UPDATE_THING_SHADOW,
                NAMESPACE + "DeleteThingShadow",
                NAMESPACE + "ListNamedShadowsForThing",
                "*",
            }
        ),
        False,
    ),
}


def resource_pattern(resource: str, *, mqtt: bool) -> re.Pattern[str]:
    """The regular expression (for ``fullmatch``) of a policy resource; ValueError for an invalid one."""
    if not resource:
        raise ValueError("a resource must not be empty")
    if resource == "*" or (mqtt and resource == "#"):
        return re.compile(".*", re.DOTALL)
    out: list[str] = []
    i = 0
    while i < len(resource):
        c = resource[i]
        if resource.startswith("${", i):
            if resource[i + 2 : i + 3] in ("*", "$", "?") and resource[i + 3 : i + 4] == "}":
                out.append(re.escape(resource[i + 2]))
                i += 4
                continue
            raise ValueError(f"resource {resource!r}: invalid escape at {i}; use ${{*}}, ${{$}} or ${{?}}")
        if c == "?":
            raise ValueError(f"resource {resource!r}: '?' is not a wildcard; write it ${{?}}")
        last, level_start = i == len(resource) - 1, i == 0 or resource[i - 1] == "/"
        if c == "*":
            out.append(".*")
        elif mqtt and c == "#" and last and i > 0 and resource[i - 1] == "/":
            out[-1] = "(?:/.*)?"  # replaces the "/" before it: "a/#" matches "a" too
        elif mqtt and c == "+" and level_start and (last or resource[i + 1] == "/"):
            out.append("[^/]*")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


@dataclass(frozen=True, slots=True)
class _Grant:
    destination: str
    operations: frozenset[str]
    resources: tuple[re.Pattern[str], ...]


class AccessControl:
    """One component's ``accessControl`` (see the module docstring); empty grants nothing."""

    def __init__(self, doc: Mapping[str, Any] | None = None, *, thing_name: str | None = None) -> None:
        self._grants: list[_Grant] = []
        for destination, policies in (doc or {}).items():
            if destination not in DESTINATIONS:
                raise ValueError(f"accessControl.{destination}: unknown destination; known: {sorted(DESTINATIONS)}")
            allowed, mqtt = DESTINATIONS[destination]
            if not isinstance(policies, Mapping):
                raise TypeError(f"accessControl.{destination}: expected policyId -> policy, got {policies!r}")
            for policy_id, policy in policies.items():
                where = f"accessControl.{destination}.{policy_id}"
                operations, resources = policy.get("operations"), policy.get("resources", ["*"])
                if not isinstance(operations, list) or not operations or not set(operations) <= allowed:
                    raise ValueError(f"{where}.operations: {operations!r}; expected a list of {sorted(allowed)}")
                if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
                    raise ValueError(f"{where}.resources: {resources!r}; expected a list of strings")
                if thing_name is not None:
                    resources = [r.replace("{iot:thingName}", thing_name) for r in resources]
                patterns = tuple(resource_pattern(r, mqtt=mqtt) for r in resources)
                self._grants.append(_Grant(destination, frozenset(operations), patterns))

    @classmethod
    def from_recipe(cls, recipe: Path, *, thing_name: str | None = None) -> AccessControl:
        """The policy in a recipe's ``ComponentConfiguration.DefaultConfiguration.accessControl``."""
        doc = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
        config = (doc.get("ComponentConfiguration") or {}).get("DefaultConfiguration") or {}
        return cls(config.get("accessControl") or {}, thing_name=thing_name)

    def allows(self, destination: str, operation: str, resource: str) -> bool:
        return any(
            g.destination == destination
            and (operation in g.operations or "*" in g.operations)
            and any(p.fullmatch(resource) for p in g.resources)
            for g in self._grants
        )


def unauthorized_message(principal: str, destination: str, operation: str, resource: str) -> str:
    """The nucleus' AuthorizationException text, which pub/sub and ShadowManager return as is."""
    return f"Principal {principal} is not authorized to perform {destination}:{operation} on resource {resource}"


@dataclass(frozen=True, slots=True)
class IpcComponent:
    """A component the stand-in knows: its name (the principal), its SVCUID token and its policy."""

    name: str
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    access_control: AccessControl = field(default_factory=AccessControl)
