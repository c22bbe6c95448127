"""Installation Qualification (IQ): what is installed and configured, compared with what was specified.

``collect(config_path)`` reads the installation as it is (nothing is taken from the gateway's own claims
when it can be measured): one ``IqItem`` per fact, keyed by a stable dotted name:

- ``gateway.version``, ``gateway.code_sha256`` (SHA-256 over every ``edge_gateway/**/*.py``, path and
  bytes: an edited file on an editable install changes it), ``gateway.thing_name``;
- ``python.version``, ``python.implementation``; ``os.system``, ``os.release``, ``os.distribution``
  (``/etc/os-release`` PRETTY_NAME), ``os.architecture``; ``host.machine_id`` (SHA-256 of
  ``edge-gateway:`` + ``/etc/machine-id``, so the raw id is not disclosed);
- ``package.<name>`` (version, for every installed distribution) and ``package.<name>.record``
  (``sha256:`` of its RECORD file; ``null`` when the distribution has none, as an egg-info source tree);
- ``greengrass.component_version`` (the ``venv-<version>`` the recipe's Run step executes from, under
  ``EDGE_GATEWAY_WORK_DIR``; no recipe variable holds the version), ``greengrass.nucleus_version``
  (``GGC_VERSION``); both ``null`` outside Greengrass;
- ``config.hash`` (``edge_gateway.shadow_config.config_hash`` of the config the gateway boots with: the
  file, plus the saved shadow config on top when it still validates, as ``edge-gateway run`` does) and
  ``config.shadow_version`` (0 = the file alone);
- ``buffer.type``, ``buffer.path``, ``buffer.max_bytes``, ``buffer.max_age_s``, ``buffer.when_full``;
- ``certificate.device`` / ``certificate.ca`` (publisher.mqtt cert_file / ca_file),
  ``certificate.greengrass_root_ca`` (``GG_ROOT_CA_PATH``), and for every OPC UA source whose security
  mode is not None ``certificate.opcua.<source>`` (its client certificate) and ``trust_list.opcua.<source>``
  (the server certificates it trusts), plus those given to ``collect`` directly. A certificate's value
  is its ``sha256:`` DER fingerprint (comma-separated for a bundle), with subject, issuer and validity in
  ``info``; an expired or not-yet-valid certificate is a ``problem`` of that item, which fails it whatever
  the spec says;
- ``clock.state``: synchronised | unsynchronised | unknown (the kernel's NTP state).

What IQ checks the facts against, and how, is ``iq_spec`` (``init_spec``, ``compare``, the SPEC format);
the host, package and certificate measurements are ``iq_collect``; renderings (JSON, HTML, PDF) are in
``iq_report``. This module keeps the entry points (all re-exported here) and the config items, the one
part that reads the saved shadow config (``control/desired.py``: the stated exception in
docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_gateway.config import greengrass
from edge_gateway.config.diff import config_hash
from edge_gateway.config.model import GatewayConfig, load_config
from edge_gateway.control.desired import AppliedConfig, boot_config
from edge_gateway.gxp.iq_collect import (
    certificate_item,
    config_certificates,
    fingerprint,
    load_certificates,
    package_items,
    runtime_items,
    trust_list_item,
)
from edge_gateway.gxp.iq_spec import SPEC_VERSION, IqItem, ItemResult, Report, SpecError, Value, compare, init_spec

__all__ = [
    "SPEC_VERSION",
    "IqItem",
    "ItemResult",
    "Report",
    "SpecError",
    "Value",
    "collect",
    "compare",
    "fingerprint",
    "init_spec",
    "load_certificates",
]


def collect(
    config_path: Path | None,
    *,
    greengrass_env: bool = False,
    env: Mapping[str, str] | None = None,
    now: datetime | None = None,
    certificates: Mapping[str, Path] | None = None,
    trust_lists: Mapping[str, Path] | None = None,
) -> list[IqItem]:
    """Everything IQ checks, measured now. ``greengrass_env``: load the config as ``run --greengrass`` does.

    ``ConfigError`` if the config does not validate (an installation with an invalid config fails IQ
    before any comparison). ``certificates`` / ``trust_lists`` add items by name (``certificate.<name>``).
    """
    env = os.environ if env is None else env
    now = now or datetime.now(UTC)
    items = [*runtime_items(env), *package_items()]
    config: GatewayConfig | None = None
    if greengrass_env:
        config, _notes = greengrass.load(env, config_path)
    elif config_path is not None:
        config = load_config(config_path)
    if config is not None:
        items += _config_items(config, config_path)
        items += config_certificates(config, env, now)
    elif greengrass.setting(env, greengrass.ROOT_CA):
        items.append(certificate_item("certificate.greengrass_root_ca", Path(env[greengrass.ROOT_CA]), now))
    for name, path in sorted((certificates or {}).items()):
        items.append(certificate_item(f"certificate.{name}", path, now))
    for name, path in sorted((trust_lists or {}).items()):
        items.append(trust_list_item(f"trust_list.{name}", path, now))
    return _unique(items)


def _unique(items: list[IqItem]) -> list[IqItem]:
    seen: dict[str, IqItem] = {}
    for item in items:
        seen.setdefault(item.key, item)
    return sorted(seen.values(), key=lambda i: i.key)


def _config_items(config: GatewayConfig, config_path: Path | None) -> list[IqItem]:
    saved = AppliedConfig.load(config.shadow_state_path) if config.shadow.enabled else None
    effective, applied = boot_config(config, saved)
    info: dict[str, Any] = {"shadow_state": str(config.shadow_state_path)}
    if config_path is not None:
        info["file"] = str(config_path)
        info["file_sha256"] = "sha256:" + hashlib.sha256(config_path.read_bytes()).hexdigest()
    buf = effective.buffer
    return [
        IqItem("gateway.thing_name", effective.gateway.thing_name),
        IqItem("config.hash", config_hash(effective), info),
        IqItem("config.shadow_version", 0 if applied is None else applied.version),
        IqItem("buffer.type", buf.type),
        IqItem("buffer.path", str(effective.buffer_path.resolve())),
        IqItem("buffer.max_bytes", buf.max_bytes),
        IqItem("buffer.max_age_s", buf.max_age_s),
        IqItem("buffer.when_full", buf.when_full),
    ]
