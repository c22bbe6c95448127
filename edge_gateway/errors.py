"""One error hierarchy for the gateway. Classes that subclass one of these live beside the code that raises
them (named here with their module), so each knows whether it is retryable::

    GatewayError
    ├── ConfigError              permanent: the operator must fix the config (carries every field error)
    │                            SpecError (gxp/iq_spec.py): the IQ spec document is malformed
    ├── FileCheckError           (config/credentials.py) permanent: a file the config names is missing,
    │                            unreadable, not PEM, mismatched or out of date (becomes a FieldError)
    ├── SourceError              retryable: a PLC did not answer or answered garbage
    │   ├── ConnectionLostError  (sources/modbus/client.py) the connection dropped mid-request: reconnect
    │   ├── RequestError         (sources/modbus/client.py) one request failed: a BAD reading, go on
    │   └── SecuritySetupError   (sources/opcua/security.py) permanent: certificate/key setup failed
    ├── PublishError             retryable unless ``retryable=False`` (e.g. a payload over the broker limit);
    │                            awscrt's errors become one in publish/transport/mqtt_errors.py only
    ├── _RetryError              (control/shadow.py) retryable: the shadow service was busy or did not answer
    ├── _RejectedError           (control/shadow.py) permanent: the shadow service refused the request
    └── StorageError             storage problems
        ├── BufferFullError      retryable: policy ``reject_new`` and no room
        ├── BufferIOError        retryable: ENOSPC / EIO while writing; the gateway keeps running
        ├── BufferCorruptError   permanent for that record or segment: it is quarantined and counted
        │                        CodecError (buffer/codec.py): a payload this codec cannot decode
        └── AuditError           (gxp/audit_format.py) permanent: the audit trail cannot be opened/written

Library exceptions are translated at the one module that owns the library (``raise X(...) from exc``):
awscrt in publish/transport/mqtt_errors.py, pymodbus in sources/modbus/client.py.
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
