"""The last good shadow config as persisted on disk (``AppliedConfig``).

Written atomically (temp file, fsync, rename, fsync dir: util/files.py) so a gateway that boots without
network runs what it ran before. A file that cannot be read is set aside (``.unreadable``) and treated as
none: the gateway then starts on the local file alone. Whether the saved document still fits the local
file is ``control/desired.py``'s ``boot_config``: it goes through the same checks as a fresh one.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_gateway.util.files import OWNER_GROUP, write_json_durably

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AppliedConfig:
    """The last shadow config that was applied and held (confirmed), as persisted on disk."""

    version: int  # 0: nothing from the shadow, the local file alone
    desired: dict[str, Any]
    config_hash: str
    # sha256 of a desired document that was rolled back: not applied again until desired changes.
    rolled_back: str | None = None

    def save(self, path: Path) -> None:
        doc = {
            "version": self.version,
            "desired": self.desired,
            "config_hash": self.config_hash,
            "rolled_back": self.rolled_back,
        }
        write_json_durably(path, doc, mode=OWNER_GROUP)  # the operator and IQ read it; it holds no secret

    @classmethod
    def load(cls, path: Path) -> AppliedConfig | None:
        """The saved config, or None when there is none or it cannot be read (logged, file set aside)."""
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            rolled_back = doc.get("rolled_back")
            return cls(
                int(doc["version"]),
                dict(doc["desired"]),
                str(doc["config_hash"]),
                None if rolled_back is None else str(rolled_back),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = path.with_suffix(".unreadable")
            with contextlib.suppress(OSError):
                path.replace(aside)
            _log.warning("cannot read the saved shadow config %s (%s); moved it to %s", path, exc, aside)
            return None
