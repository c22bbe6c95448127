"""Pieces every configuration model shares: the strict frozen base, name patterns, reconnect bounds, paths.

Kept apart from ``config/model.py`` so each source's settings can live beside its reader
(``sources/opcua/config.py``, ``sources/modbus/config.py``) without importing the whole document.

``LocalPath``: a path in a config file is relative to that file's folder, not to the working directory.
The loader passes the folder as the validation context (``{BASE_DIR: folder}``); validated without one (a
shadow document, a test), a path stays as written. A field whose default is a relative path sets
``validate_default=True`` so the default is resolved the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

ALIAS_PATTERN = r"^[A-Za-z0-9_.:\-/]{1,128}$"
NAME_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"


BASE_DIR = "base_dir"


def _relative_to_base(path: Path, info: ValidationInfo) -> Path:
    base = info.context.get(BASE_DIR) if isinstance(info.context, dict) else None
    return path if base is None or path.is_absolute() else Path(base) / path


LocalPath = Annotated[Path, AfterValidator(_relative_to_base)]


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
