"""The audit trail's vocabulary: event names, the fields the gateway gives them, and the helpers that
build those fields (``changed_paths``) and an entry's ``clock`` (``clock_state``).

Events and their fields (``AuditTrail.append(event, **fields)``; ``fields`` is any JSON object, these are
the names the gateway uses; ``changed_paths`` builds ``changed``)
------------------------------------------------------------------------------------------------------
- ``config.applied`` / ``config.rejected`` / ``config.rolled_back``: ``source`` ("file" | "shadow"),
  ``shadow_version`` (int | null), ``client_token`` (str | null), ``hash_before`` and ``hash_after`` (the
  ``sha256:…`` config hashes of ``edge_gateway.shadow_config.config_hash``; ``hash_after`` is the
  proposed config for a rejection), ``changed`` (list of dotted paths, ``sources.1.endpoint``),
  ``reasons`` (rejected: list of ``{"path", "message"}``), ``reason`` (rolled back: str).
- ``gateway.started``: ``version``, ``config_hash``, ``pid``; ``gateway.stopped``: ``reason``.
- ``certificate.changed``: ``role`` (device | ca | opcua), ``path``, ``fingerprint_before``,
  ``fingerprint_after`` (``sha256:…`` of the DER), ``subject``, ``not_after``.
- ``trust_list.changed``: ``path``, ``added``, ``removed`` (lists of fingerprints).
- ``buffer.quarantined``: ``segment``, ``reason``, ``records`` (readings lost), ``quarantine_path``.
- ``audit.torn_tail_removed`` (written by the trail itself): ``file``, ``offset``, ``bytes``, ``sha256``,
  ``text``.
- ``audit.discontinuity`` (recorder, at start): ``expected`` (``{seq, hash}`` the cloud acknowledged),
  ``found`` (``{seq, hash}`` or null), ``reason``, ``anchor`` (gxp/audit_anchor.py).
- ``config.*`` also carry ``values`` (``[{path, old, new}]``, secrets masked) and, for a rejection,
  ``offending`` (``[{path, value}]``): gxp/audit_values.py.

Event names match ``^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)+$`` (``EVENT``); ``append`` refuses others.
Nothing here writes or reads the trail: the writer is ``audit``, the stored form ``audit_format``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from edge_gateway.util.clock import clock_synchronised

EVENT = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")

CONFIG_APPLIED = "config.applied"
CONFIG_REJECTED = "config.rejected"
CONFIG_ROLLED_BACK = "config.rolled_back"
GATEWAY_STARTED = "gateway.started"
GATEWAY_STOPPED = "gateway.stopped"
CERTIFICATE_CHANGED = "certificate.changed"
TRUST_LIST_CHANGED = "trust_list.changed"
BUFFER_QUARANTINED = "buffer.quarantined"
TORN_TAIL_REMOVED = "audit.torn_tail_removed"


def changed_paths(before: Any, after: Any, prefix: str = "") -> list[str]:  # noqa: ANN401 - JSON documents
    """Dotted paths (list items by index) where two JSON documents differ: the ``changed`` field."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        out: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            out += changed_paths(before.get(key), after.get(key), f"{prefix}{key}.")
        return out
    if isinstance(before, list) and isinstance(after, list):
        out = []
        for i in range(max(len(before), len(after))):
            if i >= len(before) or i >= len(after):
                out.append(f"{prefix}{i}")  # an item added or removed at the end
            else:
                out += changed_paths(before[i], after[i], f"{prefix}{i}.")
        return out
    return [] if before == after else [prefix.rstrip(".") or "(document)"]


def clock_state() -> str:
    synced = clock_synchronised()
    return "unknown" if synced is None else ("synchronised" if synced else "unsynchronised")
