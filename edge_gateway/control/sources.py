"""What a shadow may do to sources: which hosts they reach, which serial lines, and under what security.

A source from the shadow is compared with the local file's source of the same name and type ("the local
source"); a source with no local source is new. Rules (docs/configuration.md, "Device shadow"):
- Hosts: a source that is new or moved (another host, port or OPC UA endpoint than its local source) must
  target a host in ``shadow.allowed_source_hosts`` (host names, addresses or CIDRs, IPv4 and IPv6; the
  default, None, is the hosts the local file's sources name). Names are compared as written (lower case,
  no trailing dot) and never resolved; an address is compared with the CIDRs (an IPv4-mapped IPv6 address
  as its IPv4 address). Anything that is not exactly a listed name or an address in a listed network is
  refused: ``127.1`` is not ``127.0.0.1`` here, even if the resolver says so.
- Serial lines are local only: a Modbus RTU source from the shadow must have a local RTU source of the same
  name and use its ``serial.port``; the shadow can neither add a serial source nor point one elsewhere.
- Security and credentials are bound to the endpoint: an OPC UA source whose local source has security
  (mode Sign or SignAndEncrypt) or credentials (``auth``) cannot be moved; an OPC UA source on a host where
  the local file has a secured source needs at least that security mode (so renaming a secured source, which
  would lose its security, is refused too), unless it is unchanged from its local source.
- Trust settings (``security``, ``auth``) are this device's: a shadow source may carry them only as its local
  source has them, or leave them out and keep the local source's (``with_local_trust``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from edge_gateway.config.model import GatewayConfig, SourceConfig
from edge_gateway.errors import FieldError
from edge_gateway.sources.modbus.config import ModbusTcpSource
from edge_gateway.sources.opcua.config import OpcUaSource

REFUSED: Final = "not allowed in the shadow"
_RANK: Final = {"None": 0, "Sign": 1, "SignAndEncrypt": 2}
_OPCUA_PORT: Final = 4840

# Per source type: settings that are this device's trust decisions, secret locations and bounds on what the
# server may send (a shadow raising them would reopen the memory a hostile server can take). A shadow may
# carry them only as the local file has them for a source of the same name (a desired document that copies
# the file's sources validates); it can never introduce or change them.
SOURCE_LOCAL_ONLY: dict[str, tuple[str, ...]] = {
    "opcua": ("security", "auth", "max_message_bytes", "max_chunk_count", "max_value_bytes"),
}
_WHAT = {
    "security": "certificates and trust list",
    "auth": "credentials",
    "max_message_bytes": "a bound on what the server may send",
    "max_chunk_count": "a bound on what the server may send",
    "max_value_bytes": "a bound on what the server may send",
}


@dataclass(frozen=True, slots=True)
class Target:
    """Where a source connects: a host and port (and the OPC UA endpoint's path), or a serial device."""

    host: str | None
    port: int | None
    path: str = ""
    serial: str | None = None


def target(source: SourceConfig) -> Target:
    """``ValueError`` when an OPC UA endpoint names no host or a malformed port."""
    if isinstance(source, ModbusTcpSource):
        if source.serial is not None:
            return Target(None, None, serial=source.serial.port)
        return Target(_norm(source.host or ""), source.port)
    parts = urlsplit(source.endpoint)
    if "@" in parts.netloc:
        msg = "user information in the endpoint (set credentials in auth, in the local file)"
        raise ValueError(msg)
    if not parts.hostname:
        msg = "the endpoint names no host"
        raise ValueError(msg)
    return Target(_norm(parts.hostname), parts.port or _OPCUA_PORT, parts.path.rstrip("/"))


def _norm(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")  # no whitespace stripped: " 10.0.0.1" is not 10.0.0.1 here


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """True when ``host`` is a listed name, or an address in a listed address or network."""
    host = _norm(host)
    addr = _address(host)
    for entry in allowed:
        name = _norm(entry.strip())
        if name == host:
            return True
        if addr is None or getattr(addr, "scope_id", None):  # a zone (fe80::1%eth0) matches by name only
            continue
        try:
            net = ipaddress.ip_network(name, strict=False)
        except ValueError:
            continue
        if addr.version == net.version and addr in net:
            return True
    return False


def allowed_hosts(local: GatewayConfig) -> tuple[str, ...]:
    if local.shadow.allowed_source_hosts is not None:
        return local.shadow.allowed_source_hosts
    hosts = []
    for source in local.sources:
        try:
            host = target(source).host
        except ValueError:
            continue
        if host:
            hosts.append(host)
    return tuple(dict.fromkeys(hosts))


def with_local_trust(local: GatewayConfig, desired: Mapping[str, Any]) -> Mapping[str, Any]:
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


def source_errors(local: GatewayConfig, config: GatewayConfig) -> list[FieldError]:
    """Every refusal of the rules above for the sources of the merged, validated ``config``."""
    errors = trust_errors(local, config)
    mine = {(s.name, s.type): s for s in local.sources}
    hosts = allowed_hosts(local)
    listed = (
        "shadow.allowed_source_hosts"
        if local.shadow.allowed_source_hosts is not None
        else "the hosts the local file's sources name (shadow.allowed_source_hosts is not set)"
    )
    secured = _secured_hosts(local)
    for i, source in enumerate(config.sources):
        at = f"sources.{i}.{source.type}"
        try:
            where = target(source)
        except ValueError as exc:
            errors.append(FieldError(f"{at}.endpoint", f"{REFUSED}: {exc}; give opc.tcp://host:port"))
            continue
        same = mine.get((source.name, source.type))
        before = _target_or_none(same)
        if where.serial is not None:
            if before is None or before.serial != where.serial:
                was = f"the local file's {before.serial!r}" if before and before.serial else "no serial line there"
                errors.append(
                    FieldError(
                        f"{at}.serial.port",
                        f"{REFUSED}: serial devices are local only; source {source.name!r} may use only the "
                        f"serial port the local config file gives it ({was}); add or change serial sources "
                        "in the local config file",
                    )
                )
            continue
        moved = where != before
        host = where.host or ""
        if moved and not host_allowed(host, hosts):
            field = "endpoint" if isinstance(source, OpcUaSource) else "host"
            errors.append(
                FieldError(
                    f"{at}.{field}",
                    f"{REFUSED}: host {host!r} of source {source.name!r} is not in {listed} "
                    f"({', '.join(hosts) or 'none'}); a source the shadow adds or moves must target an allowed "
                    "host: add the host (or its network) to shadow.allowed_source_hosts in the local config file",
                )
            )
        if isinstance(source, OpcUaSource):
            errors += _security_errors(at, source, same, where, secured)
    return errors


def _target_or_none(source: SourceConfig | None) -> Target | None:
    if source is None:
        return None
    try:
        return target(source)
    except ValueError:
        return None


def _secured_hosts(local: GatewayConfig) -> dict[str, tuple[int, str, Target]]:
    """Per host: the strongest security mode of a local OPC UA source there (rank, source name, target)."""
    out: dict[str, tuple[int, str, Target]] = {}
    for source in local.sources:
        if not isinstance(source, OpcUaSource):
            continue
        rank = max(_RANK[source.security.mode], 1 if source.auth is not None else 0)
        where = _target_or_none(source)
        if rank and where is not None and where.host and rank > out.get(where.host, (0, "", where))[0]:
            out[where.host] = (rank, source.name, where)
    return out


def _security_errors(
    at: str,
    source: OpcUaSource,
    same: SourceConfig | None,
    where: Target,
    secured: dict[str, tuple[int, str, Target]],
) -> list[FieldError]:
    errors = []
    before = _target_or_none(same)
    if isinstance(same, OpcUaSource) and (same.security.mode != "None" or same.auth is not None) and before != where:
        errors.append(
            FieldError(
                f"{at}.endpoint",
                f"{REFUSED}: source {source.name!r} has security or credentials in the local config file, bound to "
                f"{same.endpoint}; the shadow cannot move it to {source.endpoint}: change the endpoint in the "
                "local config file",
            )
        )
    rank, holder, held = secured.get(where.host or "", (0, "", where))
    unchanged = isinstance(same, OpcUaSource) and before == where and same.security.mode == source.security.mode
    if _RANK[source.security.mode] < rank and not unchanged:
        need = "SignAndEncrypt" if rank == _RANK["SignAndEncrypt"] else "Sign or SignAndEncrypt"
        renamed = (
            f"; it looks like a rename of {holder!r}, whose security is bound to its name"
            if held == where and holder != source.name
            else ""
        )
        errors.append(
            FieldError(
                f"{at}.security.mode",
                f"{REFUSED}: host {where.host!r} has a secured OPC UA source ({holder!r}) in the local config file, "
                f"so a source there from the shadow needs security mode {need}, not {source.security.mode}"
                f"{renamed}: add or rename secured sources in the local config file",
            )
        )
    return errors


def trust_errors(local: GatewayConfig, config: GatewayConfig) -> list[FieldError]:
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
                        f"{REFUSED}: {key} of an OPC UA source ({_WHAT[key]}) is set in the local config "
                        "file only; a source of the same name there may carry it",
                    )
                )
    return errors
