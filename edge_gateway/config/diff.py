"""What tells two configurations apart: a config's hash, and what changed between two.

``config_hash`` is SHA-256 of the effective config in canonical JSON (util/jsondoc.py): the same settings
always give the same hash (the status, the shadow's ``config_status``, provenance epochs and the audit trail
name a config by it). ``diff`` says which sources and destinations were added, removed or changed and whether
the MQTT connection or the status intervals changed, so a reconfiguration restarts only those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_gateway.config.model import GatewayConfig
from edge_gateway.util.jsondoc import sha256


def config_hash(config: GatewayConfig) -> str:
    """sha256 of the effective config in canonical JSON: the same settings always give the same hash."""
    return sha256(config.model_dump(mode="json"))


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """What changed between two effective configs, by source and destination name."""

    sources_added: tuple[str, ...] = ()
    sources_removed: tuple[str, ...] = ()
    sources_changed: tuple[str, ...] = ()
    destinations_added: tuple[str, ...] = ()
    destinations_removed: tuple[str, ...] = ()
    destinations_changed: tuple[str, ...] = ()
    status_changed: bool = False
    mqtt_changed: bool = False

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f) for f in self.__slots__)

    def describe(self) -> str:
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("sources added:", self.sources_added),
                ("sources removed:", self.sources_removed),
                ("sources changed:", self.sources_changed),
                ("destinations added:", self.destinations_added),
                ("destinations removed:", self.destinations_removed),
                ("destinations changed:", self.destinations_changed),
            )
            if names
        ]
        if self.status_changed:
            parts.append("status intervals changed")
        if self.mqtt_changed:
            parts.append("mqtt connection changed")
        return "; ".join(parts) or "no change"


def diff(old: GatewayConfig, new: GatewayConfig) -> ConfigDiff:
    def by_name(items: Any) -> dict[str, Any]:  # noqa: ANN401 - sources or destinations
        return {i.name: i for i in items}

    def compare(a: dict[str, Any], b: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        added = tuple(n for n in b if n not in a)
        removed = tuple(n for n in a if n not in b)
        changed = tuple(n for n in b if n in a and a[n] != b[n])
        return added, removed, changed

    sa, sr, sc = compare(by_name(old.sources), by_name(new.sources))
    da, dr, dc = compare(by_name(old.publisher.destinations), by_name(new.publisher.destinations))
    return ConfigDiff(
        sa,
        sr,
        sc,
        da,
        dr,
        dc,
        status_changed=old.status != new.status or old.heartbeat != new.heartbeat,
        mqtt_changed=old.publisher.mqtt != new.publisher.mqtt,
    )
