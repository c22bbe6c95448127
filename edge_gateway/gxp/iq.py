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

``init_spec(items)`` is a SPEC a person reviews and signs: every item with kind ``equals`` and its
current value. ``compare(spec, items)`` checks every item against its SPEC entry, of one of three kinds:

    items:
      package.asyncua: {equals: "2.1.0"}          # exact value (strings, numbers, booleans, null)
      python.version: {version: ">=3.11,<3.12"}    # a PEP 440 range (packaging.specifiers)
      os.release: {present: true}                  # recorded; any value but null passes

An item in the SPEC but not found fails ("missing"); an item found but not in the SPEC fails ("not in
the specification": nothing unspecified may be installed; use ``present`` to accept any value).
Renderings (JSON, HTML, PDF) are in ``iq_report``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

import edge_gateway
from edge_gateway import __version__
from edge_gateway.config import greengrass
from edge_gateway.config.diff import config_hash
from edge_gateway.config.model import GatewayConfig, load_config
from edge_gateway.control.desired import AppliedConfig, boot_config
from edge_gateway.errors import GatewayError
from edge_gateway.gxp.audit import clock_state

SPEC_VERSION = 1
Value = str | int | float | bool | None
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_CERT_SUFFIXES = {".pem", ".crt", ".cer", ".der"}
_OPCUA_CLIENT_CERT = "client_cert.der"  # sources/opcua_security.py


@dataclass(frozen=True, slots=True)
class IqItem:
    key: str
    value: Value
    info: dict[str, Any] = field(default_factory=dict)  # recorded and shown, not compared
    problem: str | None = None  # found at collection (expired certificate, unreadable file): always a failure


@dataclass(frozen=True, slots=True)
class ItemResult:
    key: str
    expected: str  # as the SPEC says it, for people: "== 2.1.0", "version >=3.11", "present", "(not specified)"
    actual: Value
    passed: bool
    reason: str
    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Report:
    time: str  # UTC ISO 8601
    thing_name: str | None
    spec_sha256: str | None
    spec_title: str
    results: tuple[ItemResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def deviations(self) -> list[ItemResult]:
        return [r for r in self.results if not r.passed]


class SpecError(GatewayError, ValueError):
    """The SPEC document is malformed; the message names the item. The operator must fix the spec."""

    retryable = False


# --- collection ----------------------------------------------------------------------------------------


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
    items = [*_runtime_items(env), *_package_items()]
    config: GatewayConfig | None = None
    if greengrass_env:
        config, _notes = greengrass.load(env, config_path)
    elif config_path is not None:
        config = load_config(config_path)
    if config is not None:
        items += _config_items(config, config_path)
        items += _config_certificates(config, env, now)
    elif greengrass.setting(env, greengrass.ROOT_CA):
        items.append(_certificate_item("certificate.greengrass_root_ca", Path(env[greengrass.ROOT_CA]), now))
    for name, path in sorted((certificates or {}).items()):
        items.append(_certificate_item(f"certificate.{name}", path, now))
    for name, path in sorted((trust_lists or {}).items()):
        items.append(_trust_list_item(f"trust_list.{name}", path, now))
    return _unique(items)


def _unique(items: list[IqItem]) -> list[IqItem]:
    seen: dict[str, IqItem] = {}
    for item in items:
        seen.setdefault(item.key, item)
    return sorted(seen.values(), key=lambda i: i.key)


def _runtime_items(env: Mapping[str, str]) -> list[IqItem]:
    package_dir = Path(edge_gateway.__file__).parent
    return [
        IqItem("gateway.version", __version__),
        IqItem("gateway.code_sha256", _code_hash(package_dir), {"directory": str(package_dir)}),
        IqItem("python.version", platform.python_version(), {"executable": sys.executable}),
        IqItem("python.implementation", platform.python_implementation()),
        IqItem("os.system", platform.system()),
        IqItem("os.release", platform.release()),
        IqItem("os.distribution", _os_release()),
        IqItem("os.architecture", platform.machine()),
        IqItem("host.machine_id", _machine_id()),
        IqItem("clock.state", clock_state()),
        IqItem("greengrass.component_version", _component_version(env), _greengrass_info(env)),
        IqItem("greengrass.nucleus_version", greengrass.setting(env, "GGC_VERSION")),
    ]


def _code_hash(package_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).as_posix()
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return "sha256:" + digest.hexdigest()


def _os_release() -> str | None:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME")
    except OSError:
        return None


def _machine_id() -> str | None:
    for path in (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id")):
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw:
            return "sha256:" + hashlib.sha256(f"edge-gateway:{raw}".encode()).hexdigest()
    return None


def _component_version(env: Mapping[str, str]) -> str | None:
    """The recipe runs ``{work:path}/venv-<version>/bin/python``: that is the deployed component version."""
    work = greengrass.setting(env, greengrass.WORK_DIR)
    if work is None:
        return None
    prefix = Path(sys.prefix)
    m = re.fullmatch(r"venv-(.+)", prefix.name)
    if m is None or prefix.parent.resolve() != Path(work).resolve():
        return None
    return m.group(1)


def _greengrass_info(env: Mapping[str, str]) -> dict[str, Any]:
    info = {"thing_name": greengrass.thing_name(env), "work_dir": greengrass.setting(env, greengrass.WORK_DIR)}
    return {k: v for k, v in info.items() if v is not None}


def _package_items() -> list[IqItem]:
    items: list[IqItem] = []
    seen: set[str] = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        key = canonicalize_name(name)
        if key in seen:  # the first on sys.path is the one imported
            continue
        seen.add(key)
        record = dist.read_text("RECORD")
        digest = None if record is None else "sha256:" + hashlib.sha256(record.encode()).hexdigest()
        location = str(dist.locate_file(""))
        items.append(IqItem(f"package.{key}", dist.version, {"location": location}))
        items.append(IqItem(f"package.{key}.record", digest))
    return items


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


def _config_certificates(config: GatewayConfig, env: Mapping[str, str], now: datetime) -> list[IqItem]:
    mqtt = config.publisher.mqtt
    items = []
    if mqtt.cert_file is not None:
        items.append(_certificate_item("certificate.device", mqtt.cert_file, now))
    if mqtt.ca_file is not None:
        items.append(_certificate_item("certificate.ca", mqtt.ca_file, now))
    root_ca = greengrass.setting(env, greengrass.ROOT_CA)
    if root_ca is not None:
        items.append(_certificate_item("certificate.greengrass_root_ca", Path(root_ca), now))
    # OPC UA security: the client certificate and the trust list of every source that uses them. Read
    # by attribute: sources without these settings have none to qualify.
    for source in config.sources:
        security = getattr(source, "security", None)
        if security is None or getattr(security, "mode", "None") == "None":
            continue
        name = source.name
        cert = Path(security.cert_dir) / _OPCUA_CLIENT_CERT
        items.append(_certificate_item(f"certificate.opcua.{name}", cert, now))
        items.append(_trust_list_item(f"trust_list.opcua.{name}", Path(security.trust_path), now))
    return items


def load_certificates(data: bytes) -> list[x509.Certificate]:
    if _PEM_BEGIN in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def fingerprint(cert: x509.Certificate) -> str:
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def _cert_info(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "fingerprint": fingerprint(cert),
    }


def _validity_problem(cert: x509.Certificate, now: datetime) -> str | None:
    if now > cert.not_valid_after_utc:
        return f"{cert.subject.rfc4514_string()} expired on {cert.not_valid_after_utc.isoformat()}"
    if now < cert.not_valid_before_utc:
        return f"{cert.subject.rfc4514_string()} is not valid before {cert.not_valid_before_utc.isoformat()}"
    return None


def _certificate_item(key: str, path: Path, now: datetime) -> IqItem:
    try:
        certs = load_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        return IqItem(key, None, {"path": str(path)}, f"cannot read certificate {path}: {exc}")
    problems = [p for c in certs if (p := _validity_problem(c, now))]
    info: dict[str, Any] = {"path": str(path), "certificates": [_cert_info(c) for c in certs]}
    return IqItem(key, ",".join(fingerprint(c) for c in certs), info, "; ".join(problems) or None)


def _trust_list_item(key: str, directory: Path, now: datetime) -> IqItem:
    """A directory of trusted certificates: the value is the sorted set of their fingerprints, hashed."""
    try:
        files = sorted(
            p for p in directory.iterdir() if p.suffix.lower() in _CERT_SUFFIXES and "key" not in p.name and p.is_file()
        )
    except OSError as exc:
        return IqItem(key, None, {"path": str(directory)}, f"cannot read trust list {directory}: {exc}")
    certs: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in files:
        try:
            for cert in load_certificates(path.read_bytes()):
                certs.append({"file": path.name, **_cert_info(cert)})
                if (p := _validity_problem(cert, now)) is not None:
                    problems.append(f"{path.name}: {p}")
        except ValueError as exc:
            problems.append(f"{path.name}: not a certificate ({exc})")
    prints = sorted(c["fingerprint"] for c in certs)
    value = "sha256:" + hashlib.sha256("\n".join(prints).encode()).hexdigest()
    info = {"path": str(directory), "count": len(certs), "certificates": certs}
    return IqItem(key, value, info, "; ".join(problems) or None)


# --- specification and comparison ---------------------------------------------------------------------


def init_spec(items: Sequence[IqItem], *, title: str = "") -> dict[str, Any]:
    """A SPEC holding every item's current value (kind ``equals``), for a person to review and sign."""
    return {
        "spec_version": SPEC_VERSION,
        "title": title or "edge-gateway installation specification",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "reviewed_by": "",
        "approved_by": "",
        "items": {item.key: {"equals": item.value} for item in items},
    }


def _expected_text(rule: Mapping[str, Any]) -> str:
    if "equals" in rule:
        value = rule["equals"]
        return f"== {value}" if isinstance(value, str) else f"== {json.dumps(value)}"
    if "version" in rule:
        return f"version {rule['version']}"
    return "present"


def _check_rule(key: str, rule: Any) -> None:  # noqa: ANN401 - from YAML
    kinds = {"equals", "version", "present"}
    if not isinstance(rule, dict) or len(rule) != 1 or next(iter(rule)) not in kinds:
        msg = f"spec item {key!r}: must be one of {{equals: VALUE}}, {{version: RANGE}}, {{present: true}}"
        raise SpecError(msg)
    if "present" in rule and rule["present"] is not True:
        msg = f"spec item {key!r}: present must be true"
        raise SpecError(msg)
    if "version" in rule:
        try:
            SpecifierSet(str(rule["version"]))
        except InvalidSpecifier as exc:
            msg = f"spec item {key!r}: {rule['version']!r} is not a version range ({exc})"
            raise SpecError(msg) from exc


def _evaluate(rule: Mapping[str, Any], actual: Value) -> tuple[bool, str]:
    if "present" in rule:
        return (actual is not None, "present" if actual is not None else "not present")
    if "version" in rule:
        spec = SpecifierSet(str(rule["version"]))
        try:
            ok = actual is not None and Version(str(actual)) in spec
        except InvalidVersion:
            return False, f"{actual!r} is not a version"
        return ok, "in range" if ok else f"{actual} is not in {spec}"
    expected = rule["equals"]
    # YAML may read 7.0 as 7: compare numbers as numbers, everything else exactly (True is not 1).
    same = expected == actual and type(expected) is type(actual)
    if not same and isinstance(expected, int | float) and isinstance(actual, int | float):
        same = not isinstance(expected, bool) and not isinstance(actual, bool) and float(expected) == float(actual)
    return same, "matches" if same else f"expected {expected!r}, found {actual!r}"


def compare(spec: Mapping[str, Any], items: Sequence[IqItem], *, spec_sha256: str | None = None) -> Report:
    """Every item against the SPEC; ``SpecError`` if the SPEC itself is malformed."""
    if spec.get("spec_version") != SPEC_VERSION:
        msg = f"spec_version must be {SPEC_VERSION}, got {spec.get('spec_version')!r}"
        raise SpecError(msg)
    rules = spec.get("items")
    if not isinstance(rules, dict):
        msg = "the spec needs an 'items' mapping"
        raise SpecError(msg)
    for key, rule in rules.items():
        _check_rule(str(key), rule)
    found = {item.key: item for item in items}
    results: list[ItemResult] = []
    for key in sorted(set(found) | {str(k) for k in rules}):
        item = found.get(key)
        rule = rules.get(key)
        if item is None:
            results.append(
                ItemResult(key, _expected_text(rule or {}), None, passed=False, reason="missing: not found", info={})
            )
            continue
        if rule is None:
            results.append(
                ItemResult(
                    key, "(not specified)", item.value, passed=False, reason="not in the specification", info=item.info
                )
            )
            continue
        passed, reason = _evaluate(rule, item.value)
        if item.problem is not None:
            reason = item.problem if passed else f"{reason}; {item.problem}"
            passed = False
        results.append(ItemResult(key, _expected_text(rule), item.value, passed, reason, item.info))
    thing = found.get("gateway.thing_name")
    return Report(
        time=datetime.now(UTC).isoformat(timespec="seconds"),
        thing_name=None if thing is None or thing.value is None else str(thing.value),
        spec_sha256=spec_sha256,
        spec_title=str(spec.get("title", "")),
        results=tuple(results),
    )
