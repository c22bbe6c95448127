"""Pieces every configuration model shares: the strict frozen base, name patterns, reconnect bounds, paths,
and what a source costs (``SourceLoad``) and how whole-document errors carry their field path.

Kept apart from ``config/model.py`` so each source's settings can live beside its reader
(``sources/opcua/config.py``, ``sources/modbus/config.py``) without importing the whole document.

``LocalPath``: a path in a config file is relative to that file's folder, not to the working directory.
The loader passes the folder as the validation context (``{BASE_DIR: folder}``); validated without one (a
shadow document, a test), a path stays as written. A field whose default is a relative path sets
``validate_default=True`` so the default is resolved the same way.

Every number in the document has a minimum and a maximum (docs/configuration.md, "Ranges"); no float
field accepts ``inf`` or ``nan``. A rule about the whole document (budget, topics) cannot attach its error
to a field through pydantic: it raises ``document_errors([(path, message), ...])``, which
``config.model.field_errors`` turns back into one ``FieldError`` per path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

ALIAS_PATTERN = r"^[A-Za-z0-9_.:\-/]{1,128}$"
NAME_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"


BASE_DIR = "base_dir"


def _relative_to_base(path: Path, info: ValidationInfo) -> Path:
    base = info.context.get(BASE_DIR) if isinstance(info.context, dict) else None
    return path if base is None or path.is_absolute() else Path(base) / path


LocalPath = Annotated[Path, AfterValidator(_relative_to_base)]


class Model(BaseModel):
    """Unknown fields are errors that name the field; a loaded config never changes; no inf or nan."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Reconnect delays: 50 ms (tests on loopback) .. 1 h (a delay beyond that is an outage, not a backoff).
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.05, 3600.0


class Reconnecting(Model):
    reconnect_min_s: float = Field(default=1.0, ge=RECONNECT_MIN_S, le=RECONNECT_MAX_S)
    reconnect_max_s: float = Field(default=60.0, ge=RECONNECT_MIN_S, le=RECONNECT_MAX_S)

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


DOCUMENT_ERRORS = "document_errors"


def document_errors(errors: Sequence[tuple[str, str]]) -> PydanticCustomError:
    """One pydantic error carrying several ``(field path, message)``; ``field_errors`` unpacks it."""
    text = "; ".join(f"{path}: {message}" for path, message in errors)
    return PydanticCustomError(DOCUMENT_ERRORS, "{text}", {"text": text, "errors": tuple(errors)})


@dataclass(frozen=True, slots=True)
class SourceLoad:
    """What one source asks of its PLC and of the gateway, for the whole-document budget (config/budget.py).

    ``host``: the PLC host (or the serial device) it connects to; ``connections``: TCP connections or OPC UA
    sessions it opens there; ``points``: points (Modbus) or nodes (OPC UA) it reads; ``points_per_s``: the
    most readings per second its intervals allow (subscribed nodes at their sampling interval, or the
    publishing interval when that is 0).
    """

    host: str
    connections: int
    points: int
    points_per_s: float
