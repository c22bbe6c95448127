"""The configuration the device shadow may set: validation, merge with the local file, the saved config.

The shadow's ``desired`` state is the same document as the local config file, cut down to an explicit
allow-list (control/policy.py, ``ALLOWED``): ``sources``, ``publisher.destinations``, the timing, backoff and
flow-control settings of ``publisher.mqtt`` (its ``endpoint`` and ``port`` only into the local
``shadow.allowed_endpoints``), ``status.interval_s``, the ``heartbeat`` intervals and ``version``. Objects
merge into the local file's key by key; lists (sources, destinations) replace it. Everything else stays
local and a shadow that sets it is rejected with the path and the reason.

``effective_config(local, desired)`` judges the *whole* document before anything is touched, in this order,
and raises ``ConfigError`` with every problem as ``FieldError(path, message)``; paths are those of the
shadow document (``sources.1.modbus.poll_interval_ms``):
1. AWS's limits on the raw JSON (8 KB, 6 levels), before anything is parsed into models: ``(document)``;
2. the allow-list: each key not on it is an error, and never reaches the merged document;
3. the models, on the local file with the allowed part on top;
4. against the local file: the MQTT endpoint (policy.py), each source's host, serial line and security
   (control/sources.py), each destination's dead-letter codes (policy.py).
config/diff.py says what changed, so only that restarts. ``boot_config`` puts the saved last good config
(control/saved.py, ``AppliedConfig``) through the same function at start.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from edge_gateway.config.model import GatewayConfig, MqttSettings, field_errors
from edge_gateway.control.policy import LOCAL_ONLY, allowed_part, dead_letter_errors, document_errors, endpoint_errors
from edge_gateway.control.saved import AppliedConfig
from edge_gateway.control.schema import shadow_schema
from edge_gateway.control.sources import SOURCE_LOCAL_ONLY, source_errors, with_local_trust
from edge_gateway.errors import ConfigError, FieldError

__all__ = [
    "LOCAL_ONLY",
    "ORIGIN",
    "SOURCE_LOCAL_ONLY",
    "AppliedConfig",
    "boot_config",
    "effective_config",
    "shadow_schema",
]

_log = logging.getLogger(__name__)

ORIGIN = "device shadow"


def effective_config(local: GatewayConfig, desired: Any) -> GatewayConfig:  # noqa: ANN401 - raw JSON
    """The local config with the shadow's ``desired`` applied, validated as a whole; else ``ConfigError``."""
    if not isinstance(desired, Mapping):
        kind = "null" if desired is None else type(desired).__name__
        raise ConfigError(ORIGIN, [FieldError("(document)", f"desired state must be a JSON object, not {kind}")])
    errors = document_errors(desired)
    if errors:  # nothing of a document AWS would not hold is looked at further
        raise ConfigError(ORIGIN, errors)
    allowed, errors = allowed_part(desired)
    merged = _overlay(local.model_dump(mode="json"), with_local_trust(local, allowed))
    try:
        config = GatewayConfig.model_validate(merged)
    except ValidationError as exc:
        errors += field_errors(exc)
        # Whatever else is wrong, a move of the cloud connection is reported too (it needs no other section).
        with contextlib.suppress(ValidationError, KeyError, TypeError):
            errors += endpoint_errors(local, MqttSettings.model_validate(merged["publisher"]["mqtt"]))
    else:
        errors += endpoint_errors(local, config.publisher.mqtt)
        errors += source_errors(local, config)
        errors += dead_letter_errors(local, config)
    if errors:
        raise ConfigError(ORIGIN, errors)
    return config


def _overlay(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` on top: objects merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            out[key] = _overlay(base[key], value)
        else:
            out[key] = value
    return out


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
