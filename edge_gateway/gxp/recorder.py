"""What the running gateway writes to its audit trail, and when (docs/gxp.md).

- At start: ``gateway.started`` (version, pid, config hash and where the config came from), preceded by
  ``config.applied`` with ``source: "file"`` when the configuration differs from the one the previous run
  recorded (a changed local file, or the very first start: ``hash_before`` null), by ``certificate.changed``
  for every device certificate, CA or OPC UA client certificate whose fingerprint changed (or is seen for
  the first time) and ``trust_list.changed`` for an OPC UA trust list whose certificates changed (both
  also checked every minute while running), and followed by ``provenance.declared`` for a new
  configuration (provenance.py).
- Shadow outcomes, once final (shadow.py): ``config.applied`` (after the confirm window passed),
  ``config.rejected`` (with every reason), ``config.rolled_back`` (with the reason): one entry per change.
  The same outcome for the same shadow version and config is recorded once, also when a crash between the
  entry and the saved config makes the gateway judge that change again after a restart.
- ``buffer.quarantined`` for every quarantine of the buffer (at its open, by recovery, or while it runs): the
  segment, the reason, the readings lost and where the damaged bytes are kept.
- At a clean stop: ``gateway.stopped``; the publisher then gets a moment to send what is pending.

- At open, before anything else: the trail is checked against the last entry the cloud acknowledged
  (gxp/audit_anchor.py); a discontinuity becomes an ``audit.discontinuity`` entry, publishing starts again
  from that entry, and ``discontinuity`` stays set for the process's life (a heartbeat problem).

The trail's own state (last configuration recorded, certificate fingerprints) is ``gateway-state.json`` in
the trail directory. Nothing here ever stops the gateway or its data: an audit write that fails is logged
as an error, counted, and kept in ``write_error`` until an append succeeds again. It does stop shadow
changes (fail closed): the shadow agent asks ``check_writable`` before it applies one, and rolls a change
back whose ``config.applied`` entry cannot be written (``config_event`` returns False).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from edge_gateway import __version__
from edge_gateway.buffer.base import Quarantined
from edge_gateway.config.diff import config_hash
from edge_gateway.config.model import GatewayConfig
from edge_gateway.gxp.audit import (
    BUFFER_QUARANTINED,
    CERTIFICATE_CHANGED,
    CONFIG_APPLIED,
    GATEWAY_STARTED,
    GATEWAY_STOPPED,
    TRUST_LIST_CHANGED,
    AuditError,
    AuditTrail,
    changed_paths,
)
from edge_gateway.gxp.audit_anchor import ANCHOR_FILE, DISCONTINUITY, check, load_anchor
from edge_gateway.gxp.audit_format import AuditEntry, trail_files
from edge_gateway.gxp.audit_publisher import AuditPublisher
from edge_gateway.gxp.audit_values import cap, changed_values
from edge_gateway.util.files import write_json_durably

_log = logging.getLogger(__name__)

PROVENANCE_DECLARED = "provenance.declared"
_CONFIG_EVENTS = ("config.applied", "config.rejected", "config.rolled_back")
_STATE_FILE = "gateway-state.json"
_PUBLISHED_FILE = "published.json"
_FLUSH_S = 1.0
OPCUA_CLIENT_CERT = "client_cert.der"  # in an OPC UA source's security.cert_dir (sources/opcua_security.py)


def _dump(config: GatewayConfig) -> dict[str, Any]:
    doc: dict[str, Any] = config.model_dump(mode="json")
    return doc


class AuditRecorder:
    def __init__(self, config: GatewayConfig, publish: Callable[[str, bytes], Awaitable[int]]) -> None:
        s = config.audit
        self.directory = config.audit_path
        self.trail = AuditTrail(self.directory, max_file_bytes=s.max_file_bytes, max_files=s.max_files)
        self.anchor_path = config.gateway.data_dir / ANCHOR_FILE
        published = self.directory / _PUBLISHED_FILE
        self.publisher = AuditPublisher(
            self.trail, publish, config.audit_topic, published, anchor_path=self.anchor_path
        )
        self._state_path = self.directory / _STATE_FILE
        self._state = _load_json(self._state_path)
        self._last_config_event = _last_config_event(self.directory)
        self.failures = 0
        self.write_error: str | None = None  # the last append's failure, until one succeeds
        self.discontinuity = self._check_anchor(load_anchor(self.anchor_path, published))

    def _check_anchor(self, anchor: tuple[int, str] | None) -> dict[str, Any] | None:
        """Record a discontinuity between the trail and what the cloud acknowledged (audit_anchor.py)."""
        found = check(self.directory, anchor, self.trail.last_seq)
        if found is None:
            return None
        _log.error(
            "audit trail %s does not hold what the cloud acknowledged: %s (expected seq %d hash %s); recorded as "
            "an audit.discontinuity entry and reported in every heartbeat until the gateway restarts",
            self.directory,
            found["reason"],
            found["expected"]["seq"],
            found["expected"]["hash"],
        )
        entry = self.trail.append(DISCONTINUITY, **found, anchor=str(self.anchor_path))
        try:
            self.publisher.restart_from(entry.seq, entry.prev)
        except OSError as exc:  # the entry is on the chain; the next start would find the same gap again
            _log.error("audit anchor %s not moved: %s", self.anchor_path, exc)
        return {**found, "entry_seq": entry.seq}

    async def append(self, event: str, **fields: Any) -> bool:  # noqa: ANN401 - JSON values
        try:
            await asyncio.to_thread(self.trail.append, event, **fields)
        except (OSError, AuditError) as exc:
            self.failures += 1
            self.write_error = str(exc)
            _log.error("audit trail %s: %s not recorded: %s", self.directory, event, exc)
            return False
        self.write_error = None
        return True

    async def check_writable(self) -> None:
        """``AuditError`` saying why, unless an entry can be written now (AuditTrail.check_writable)."""
        try:
            await asyncio.to_thread(self.trail.check_writable)
        except AuditError as exc:
            self.write_error = str(exc)
            raise
        self.write_error = None

    async def started(self, config: GatewayConfig, *, shadow_version: int | None) -> None:
        digest = config_hash(config)
        if self._state.get("config_hash") != digest:
            before = self._state.get("config")
            await self.append(
                CONFIG_APPLIED,
                source="file",
                shadow_version=shadow_version,
                client_token=None,
                hash_before=self._state.get("config_hash"),
                hash_after=digest,
                changed=changed_paths(before, _dump(config)) if isinstance(before, dict) else ["(document)"],
                values=cap(changed_values(before, _dump(config)))[0] if isinstance(before, dict) else [],
            )
            self._remember(config)
        await self.check_certificates(config)
        await self.append(
            GATEWAY_STARTED,
            version=__version__,
            pid=os.getpid(),
            config_hash=digest,
            config_source="local" if shadow_version is None else "shadow",
            shadow_version=shadow_version,
        )

    async def config_event(
        self,
        event: str,
        *,
        before: GatewayConfig,
        after: GatewayConfig | None,
        shadow_version: int | None,
        client_token: str | None,
        desired_hash: str | None = None,
        changed: list[str] | None = None,
        reasons: list[dict[str, str]] | None = None,
        reason: str | None = None,
        values: list[dict[str, Any]] | None = None,
        offending: list[dict[str, Any]] | None = None,
    ) -> bool:
        """Record one shadow outcome, unless this very outcome was the last config event recorded; False if
        it could not be written. ``values`` (old/new per changed path, audit_values.py) defaults to the
        difference of the two configs; a rejection passes the desired document's own and ``offending``."""
        hash_after = config_hash(after) if after is not None else desired_hash
        key = [event, shadow_version, hash_after]
        if key == self._last_config_event:
            _log.info("audit: %s of shadow version %s is already recorded", event, shadow_version)
            return True
        if changed is None:
            changed = changed_paths(_dump(before), _dump(after)) if after is not None else []
        if values is None:
            values = changed_values(_dump(before), _dump(after)) if after is not None else []
        listed, omitted = cap(values)
        extra: dict[str, Any] = {"values": listed}
        if omitted:
            extra["values_omitted"] = omitted
        if offending is not None:
            extra["offending"] = cap(offending)[0]
        ok = await self.append(
            event,
            source="shadow",
            shadow_version=shadow_version,
            client_token=client_token,
            hash_before=config_hash(before),
            hash_after=hash_after,
            changed=changed,
            **({"reasons": reasons} if reasons is not None else {}),
            **({"reason": reason} if reason is not None else {}),
            **extra,
        )
        if ok:
            self._last_config_event = key
            if event == CONFIG_APPLIED and after is not None:
                self._remember(after)
        return ok

    async def declare(self, entries: Iterable[dict[str, Any]]) -> None:
        for fields in entries:
            await self.append(PROVENANCE_DECLARED, **fields)

    async def buffer_quarantined(self, found: Quarantined) -> None:
        """One quarantine of the buffer (``Buffer.take_quarantined``)."""
        await self.append(
            BUFFER_QUARANTINED,
            segment=found.segment,
            reason=found.reason,
            records=found.records,
            quarantine_path=str(found.path),
        )

    async def stopped(self, reason: str) -> None:
        if await self.append(GATEWAY_STOPPED, reason=reason):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_FLUSH_S):
                    await self.publisher.wait_acked(self.trail.last_seq)

    def close(self) -> None:
        self.trail.close()

    async def check_certificates(self, config: GatewayConfig) -> None:
        """Record certificates and OPC UA trust lists that changed since they were last recorded (at start,
        and periodically: an OPC UA client certificate is created at the first secured connect, and
        first-use trust adds to a trust list while the gateway runs)."""
        mqtt = config.publisher.mqtt
        files: list[tuple[str, Path]] = [(r, p) for r, p in (("device", mqtt.cert_file), ("ca", mqtt.ca_file)) if p]
        trust_lists: list[tuple[str, Path]] = []
        for source in config.sources:
            security = getattr(source, "security", None)
            if security is None or security.mode == "None":
                continue
            files.append((f"opcua:{source.name}", security.cert_dir / OPCUA_CLIENT_CERT))
            trust_lists.append((source.name, security.trust_path))
        for role, path in files:
            await self._certificate_changed(role, path)
        for name, directory in trust_lists:
            await self._trust_list_changed(name, directory)

    async def _certificate_changed(self, role: str, path: Path) -> None:
        known: dict[str, Any] = self._state.setdefault("certificates", {})
        cert = await asyncio.to_thread(_certificate, path)
        if cert is None or known.get(role, {}).get("fingerprint") == cert["fingerprint"]:
            return
        ok = await self.append(
            CERTIFICATE_CHANGED,
            role=role,
            path=str(path),
            fingerprint_before=known.get(role, {}).get("fingerprint"),
            fingerprint_after=cert["fingerprint"],
            subject=cert["subject"],
            not_after=cert["not_after"],
        )
        if ok:
            known[role] = {"path": str(path), "fingerprint": cert["fingerprint"]}
            self._save_state()

    async def _trust_list_changed(self, source: str, directory: Path) -> None:
        known: dict[str, list[str]] = self._state.setdefault("trust_lists", {})
        now = sorted(await asyncio.to_thread(_fingerprints, directory))
        before = known.get(str(directory))
        if before == now or (before is None and not now):
            return
        ok = await self.append(
            TRUST_LIST_CHANGED,
            source=source,
            path=str(directory),
            added=sorted(set(now) - set(before or [])),
            removed=sorted(set(before or []) - set(now)),
        )
        if ok:
            known[str(directory)] = now
            self._save_state()

    def _remember(self, config: GatewayConfig) -> None:
        self._state["config"] = _dump(config)
        self._state["config_hash"] = config_hash(config)
        self._save_state()

    def _save_state(self) -> None:
        try:
            write_json_durably(self._state_path, self._state)
        except OSError as exc:
            _log.error("audit state %s not saved: %s", self._state_path, exc)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _log.warning("audit state %s unreadable (%s): the next config is recorded as new", path, exc)
        return {}
    return doc if isinstance(doc, dict) else {}


def _last_config_event(directory: Path) -> list[Any] | None:
    """[event, shadow_version, hash_after] of the newest config outcome, from the last two trail files."""
    last: list[Any] | None = None
    for _, path in trail_files(directory)[-2:]:
        with path.open("rb") as f:
            for raw in f:
                if not raw.endswith(b"\n") or b'"event":"config.' not in raw:
                    continue
                with contextlib.suppress(ValueError):
                    entry = AuditEntry.parse(raw[:-1])
                    if entry.event in _CONFIG_EVENTS:
                        fields = entry.fields
                        last = [entry.event, fields.get("shadow_version"), fields.get("hash_after")]
    return last


def _load_certificate(data: bytes) -> Any:  # noqa: ANN401 - cryptography's Certificate
    from cryptography import x509  # noqa: PLC0415 - only when certificates are checked

    return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)


def _certificate(path: Path) -> dict[str, str] | None:
    from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

    try:
        cert = _load_certificate(path.read_bytes())
    except FileNotFoundError:  # e.g. an OPC UA client certificate not created yet
        return None
    except (OSError, ValueError) as exc:
        _log.warning("audit: certificate %s unreadable: %s", path, exc)
        return None
    return {
        "fingerprint": "sha256:" + hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        "subject": cert.subject.rfc4514_string(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def _fingerprints(directory: Path) -> list[str]:
    """sha256 fingerprints of the certificates (DER or PEM) in a trust list directory."""
    out = []
    for path in sorted(directory.glob("*")) if directory.is_dir() else []:
        if path.suffix.lower() in (".der", ".pem", ".crt", ".cer") and path.is_file():
            cert = _certificate(path)
            if cert is not None:
                out.append(cert["fingerprint"])
    return out
