"""IQ measurements that need no gateway config semantics: the host and runtime, the installed
distributions, and certificates (one file or a bundle) and trust lists (a directory of them).

Each function returns ``IqItem``s keyed as listed in ``iq``'s docstring, measured now from the system,
never taken from the gateway's own claims when they can be measured. Nothing here raises for a missing
or unreadable certificate: that becomes the item's ``problem`` (and so a failure of IQ), as does an
expired or not-yet-valid one. ``iq.collect`` puts these together with the config items.
"""

from __future__ import annotations

import hashlib
import platform
import re
import sys
from collections.abc import Mapping
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from packaging.utils import canonicalize_name

import edge_gateway
from edge_gateway import __version__
from edge_gateway.config import greengrass
from edge_gateway.config.model import GatewayConfig
from edge_gateway.gxp.audit_events import clock_state
from edge_gateway.gxp.iq_spec import IqItem

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_CERT_SUFFIXES = {".pem", ".crt", ".cer", ".der"}
_OPCUA_CLIENT_CERT = "client_cert.der"  # sources/opcua_security.py


def runtime_items(env: Mapping[str, str]) -> list[IqItem]:
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


def package_items() -> list[IqItem]:
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


def config_certificates(config: GatewayConfig, env: Mapping[str, str], now: datetime) -> list[IqItem]:
    mqtt = config.publisher.mqtt
    items = []
    if mqtt.cert_file is not None:
        items.append(certificate_item("certificate.device", mqtt.cert_file, now))
    if mqtt.ca_file is not None:
        items.append(certificate_item("certificate.ca", mqtt.ca_file, now))
    root_ca = greengrass.setting(env, greengrass.ROOT_CA)
    if root_ca is not None:
        items.append(certificate_item("certificate.greengrass_root_ca", Path(root_ca), now))
    # OPC UA security: the client certificate and the trust list of every source that uses them. Read
    # by attribute: sources without these settings have none to qualify.
    for source in config.sources:
        security = getattr(source, "security", None)
        if security is None or getattr(security, "mode", "None") == "None":
            continue
        name = source.name
        cert = Path(security.cert_dir) / _OPCUA_CLIENT_CERT
        items.append(certificate_item(f"certificate.opcua.{name}", cert, now))
        items.append(trust_list_item(f"trust_list.opcua.{name}", Path(security.trust_path), now))
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


def certificate_item(key: str, path: Path, now: datetime) -> IqItem:
    try:
        certs = load_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        return IqItem(key, None, {"path": str(path)}, f"cannot read certificate {path}: {exc}")
    problems = [p for c in certs if (p := _validity_problem(c, now))]
    info: dict[str, Any] = {"path": str(path), "certificates": [_cert_info(c) for c in certs]}
    return IqItem(key, ",".join(fingerprint(c) for c in certs), info, "; ".join(problems) or None)


def trust_list_item(key: str, directory: Path, now: datetime) -> IqItem:
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
