"""One error hierarchy for the gateway.

    GatewayError
    ├── ConfigError            permanent: the operator must fix the config (carries every field error)
    ├── SourceError            retryable: a PLC did not answer or answered garbage
    ├── PublishError           retryable unless ``retryable=False`` (e.g. a payload over the broker limit)
    └── StorageError           storage problems
        ├── BufferFullError    retryable: policy ``reject_new`` and no room
        ├── BufferIOError      retryable: ENOSPC / EIO while writing; the gateway keeps running
        └── BufferCorruptError permanent for that segment: it is moved to quarantine/

Library exceptions are translated at the module that owns the library (``raise X(...) from exc``).
Messages say what failed, where, and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass


class GatewayError(Exception):
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(GatewayError):
    retryable = False

    def __init__(self, origin: str, errors: list[FieldError]) -> None:
        self.origin = origin
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"invalid configuration in {origin} ({len(errors)} error(s)):\n{lines}")


class SourceError(GatewayError):
    retryable = True


class PublishError(GatewayError):
    def __init__(self, message: str, *, retryable: bool = True, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.reason_code = reason_code


class StorageError(GatewayError):
    retryable = True


class BufferFullError(StorageError):
    retryable = True


class BufferIOError(StorageError):
    retryable = True


class BufferCorruptError(StorageError):
    retryable = False
