"""JSON documents as the gateway compares, hashes and patches them.

- ``canonical``: the one canonical form (keys sorted, no spaces, UTF-8 as is, no NaN/Infinity). The audit
  trail's hash chain, the IQ report's hash, the config hash and the shadow's "already handled" key all use
  it, so two equal documents always give the same bytes.
- ``sha256``: ``"sha256:<hex>"`` of a document's canonical form.
- ``loads``: strict JSON as RFC 8259 has it (``NaN``/``Infinity``, which Python accepts, are refused), so
  whatever a peer sends can be put back in canonical form.
- ``removed_as_null``: a shadow-style patch (a key that went away is sent as ``null``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def canonical(doc: Any) -> bytes:  # noqa: ANN401 - any JSON document
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _refuse_constant(name: str) -> Any:  # noqa: ANN401 - json's hook signature
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes | str) -> Any:  # noqa: ANN401 - any JSON document
    """Parse JSON; ``ValueError`` for anything that is not (``NaN``/``Infinity`` included)."""
    return json.loads(data, parse_constant=_refuse_constant)


def sha256(doc: Any) -> str:  # noqa: ANN401 - any JSON document
    return "sha256:" + hashlib.sha256(canonical(doc)).hexdigest()


def removed_as_null(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` plus ``None`` for every key of ``old`` it no longer has, at any depth of nested objects."""
    out = dict(new)
    for key, value in old.items():
        if key not in new:
            out[key] = None
        elif isinstance(value, dict) and isinstance(new[key], dict):
            out[key] = removed_as_null(value, new[key])
    return out
