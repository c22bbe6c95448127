"""Pieces every configuration model shares: the strict frozen base, name patterns, reconnect bounds.

Kept apart from ``config.py`` so each source's settings can live beside its reader
(``sources/opcua_config.py``, ``sources/modbus_config.py``) without importing the whole document.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

ALIAS_PATTERN = r"^[A-Za-z0-9_.:\-/]{1,128}$"
NAME_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"


class Model(BaseModel):
    """Unknown fields are errors that name the field; a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Reconnecting(Model):
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _backoff_bounds(self) -> Self:
        if self.reconnect_min_s > self.reconnect_max_s:
            msg = f"reconnect_min_s ({self.reconnect_min_s}) must not exceed reconnect_max_s ({self.reconnect_max_s})"
            raise ValueError(msg)
        return self


def check_unique(values: list[str], what: str) -> None:
    """Raise ``ValueError`` naming every value that occurs more than once."""
    seen: set[str] = set()
    dupes = sorted({v for v in values if v in seen or seen.add(v)})  # type: ignore[func-returns-value]
    if dupes:
        msg = f"duplicate {what}(s): {', '.join(dupes)}"
        raise ValueError(msg)
