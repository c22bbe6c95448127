"""What a configuration change changed, value by value, with credentials and secret locations masked.

Contract (the ``values`` and ``offending`` fields of ``config.*`` audit entries, docs/gxp.md):
- ``changed_values(before, after)``: one ``{"path", "old", "new"}`` per path ``changed_paths`` gives
  (dotted, list items by index; an item added or removed at the end of a list is one path whose ``old`` or
  ``new`` is ``null``), in the same order.
- ``offending_values(document, errors)``: one ``{"path", "value"}`` per error of a rejected desired
  document: the value found at the error's path in that document (``"missing": true`` instead when the
  document has nothing there, e.g. a required field left out). Validation paths may name a union's tag
  (``sources.1.modbus.port`` for ``sources.1.port``): a segment that is not a key but equals the ``type``
  of the object it is in is skipped.
- Masked (MUST): every value under a key ``auth``; every key that starts with ``password`` (``password_file``,
  ``password_env``) or contains ``secret``, ``token`` or ``private``; ``username``; ``key_file`` (the
  device's private key) and ``cert_dir`` (an OPC UA client's private key lives there). A masked value is
  ``"***"``; ``null`` stays ``null`` (whether a credential is set is not secret). Masking applies inside
  whole objects too (a source added with an ``auth`` block). Certificates (``cert_file``, ``ca_file``,
  trust lists) are public and are recorded.
- Size: a value whose canonical JSON is over ``MAX_VALUE_BYTES`` is recorded as ``{"omitted": "too
  large", "bytes": n, "sha256": "..."}``; at most ``MAX_VALUES`` entries and ``MAX_TOTAL_BYTES`` of them
  are listed, the number left out is given by the caller's ``values_omitted`` field (``cap``). An entry
  stays well below the 128 KB of an IoT Core message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from edge_gateway.gxp.audit_events import changed_paths
from edge_gateway.util.jsondoc import canonical

MASK = "***"
MAX_VALUE_BYTES = 2048
MAX_VALUES = 100
MAX_TOTAL_BYTES = 64 * 1024
_SECRET_KEYS = frozenset({"auth", "username", "key_file", "cert_dir"})
_SECRET_PARTS = ("secret", "token", "private")


def is_secret(key: str) -> bool:
    k = key.lower()
    return k in _SECRET_KEYS or k.startswith("password") or any(p in k for p in _SECRET_PARTS)


def mask(value: Any, path: Sequence[str] = ()) -> Any:  # noqa: ANN401 - JSON values
    """``value`` found at ``path`` with every secret in it (or all of it, if the path is secret) masked."""
    if value is None:
        return None
    if any(is_secret(p) for p in path):
        return MASK
    if isinstance(value, Mapping):
        return {k: mask(v, (str(k),)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


def _bounded(value: Any) -> Any:  # noqa: ANN401 - JSON values
    data = canonical(value)
    if len(data) <= MAX_VALUE_BYTES:
        return value
    return {"omitted": "too large", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


_MISSING = object()


def value_at(document: Any, path: str) -> Any:  # noqa: ANN401 - JSON values
    """The value at a dotted path (list items by index), skipping a union tag; ``_MISSING`` if none."""
    node = document
    for part in path.split(".") if path and not path.startswith("(") else []:
        if isinstance(node, Mapping):
            if part in node:
                node = node[part]
            elif node.get("type") != part:  # a union tag in the path is not a key of the document
                return _MISSING
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _parts(path: str) -> list[str]:
    return [p for p in path.split(".") if not p.isdigit()]


def cap(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The first items, at most ``MAX_VALUES`` and ``MAX_TOTAL_BYTES`` of canonical JSON; how many were left out."""
    total = 0
    for n, item in enumerate(items[: MAX_VALUES + 1]):
        total += len(canonical(item))
        if n == MAX_VALUES or total > MAX_TOTAL_BYTES:
            return items[:n], len(items) - n
    return items, 0


def changed_values(before: Any, after: Any) -> list[dict[str, Any]]:  # noqa: ANN401 - JSON documents
    """``{"path", "old", "new"}`` for every path where two JSON documents differ, secrets masked."""
    out = []
    for path in changed_paths(before, after):
        old, new = value_at(before, path), value_at(after, path)
        out.append(
            {
                "path": path,
                "old": _bounded(mask(None if old is _MISSING else old, _parts(path))),
                "new": _bounded(mask(None if new is _MISSING else new, _parts(path))),
            }
        )
    return out


def offending_values(document: Any, errors: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:  # noqa: ANN401
    """``{"path", "value"}`` (or ``"missing": true``) at each error path of a rejected document."""
    out: list[dict[str, Any]] = []
    for error in errors:
        path = error["path"]
        found = value_at(document, path)
        if found is _MISSING:
            out.append({"path": path, "missing": True})
        else:
            out.append({"path": path, "value": _bounded(mask(found, _parts(path)))})
    return out
