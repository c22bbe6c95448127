"""Reading and judging one credential file: a certificate, a private key, a CA bundle, a password file
(config/files.py says which fields name them and what each problem means for ``run``).

Contract: every function reads only, and raises ``FileCheckError`` whose message names the file, says
what is wrong and what to do; ``Clock`` is the time certificates are judged at, with the kernel's NTP state,
so a validity message can say when the clock, not the certificate, is wrong (an unsynchronised Raspberry Pi
boots in 1970). Files over 4 MiB are refused unread: no credential is that large.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from edge_gateway.errors import GatewayError
from edge_gateway.util.clock import clock_synchronised

_MAX_BYTES = 4 << 20  # a CA bundle is ~200 KB; anything far larger is not what the field wants


@dataclass(frozen=True, slots=True)
class Clock:
    """The time certificates are judged at, and whether the kernel says it is synchronised (None: unknown)."""

    now: dt.datetime
    synchronised: bool | None

    @classmethod
    def system(cls) -> Clock:
        return cls(dt.datetime.now(dt.UTC), clock_synchronised())

    def describe(self) -> str:
        state = {True: "and is synchronised (NTP)", False: "and is not synchronised (NTP)", None: "(NTP state unknown)"}
        return f"the system clock says {when(self.now)} {state[self.synchronised]}"


class FileCheckError(GatewayError):
    """One problem with one file; the message says what is wrong and what to do. Not retryable: the operator
    must act. config/files.py turns each into a ``FieldError`` naming the field; it never leaves config/."""

    retryable = False


def user() -> str:
    return f"the gateway's user (uid {os.geteuid()})"


def read_file(path: Path, what: str) -> bytes:
    """The bytes of ``path`` (``what``: what the field wants there, for the message)."""
    fix = "put it there or correct the path"
    try:
        if path.is_dir():
            msg = f"{path} is a directory, not a file ({what}): give the path of the file itself"
            raise FileCheckError(msg)
        if path.exists() and not path.is_file():
            msg = f"{path} is not a regular file ({what}): give the path of the file itself"
            raise FileCheckError(msg)
        with path.open("rb") as f:
            data = f.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        msg = f"{path} does not exist ({what}): {fix}"
        raise FileCheckError(msg) from None
    except NotADirectoryError:
        blocker = next((p for p in path.parents if p.is_file()), path.parent)
        msg = f"{path} cannot exist: {blocker} is a file, not a directory ({what}): {fix}"
        raise FileCheckError(msg) from None
    except PermissionError:
        msg = f"{path} cannot be read by {user()} ({what}): give that user read access (chown or chmod)"
        raise FileCheckError(msg) from None
    except OSError as exc:
        msg = f"cannot read {path} ({what}): {exc.strerror or exc}"
        raise FileCheckError(msg) from None
    if len(data) > _MAX_BYTES:
        msg = f"{path} is over {_MAX_BYTES >> 20} MiB: not {what}; correct the path"
        raise FileCheckError(msg)
    return data


def certificates(path: Path, what: str) -> list[x509.Certificate]:
    data = read_file(path, what)
    if b"-----BEGIN" not in data:
        hint = "convert it with `openssl x509 -inform der -in FILE -out FILE.pem`" if _is_der(data) else "correct it"
        msg = f"{path} is not PEM ({what}, '-----BEGIN CERTIFICATE-----'): {hint}"
        raise FileCheckError(msg)
    if b"PRIVATE KEY-----" in data and b"BEGIN CERTIFICATE" not in data:
        msg = f"{path} holds a private key, not a certificate ({what}): were cert_file and key_file swapped?"
        raise FileCheckError(msg)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        msg = f"{path} holds no readable PEM certificate ({what}): replace it with the right file"
        raise FileCheckError(msg) from None


def _is_der(data: bytes) -> bool:
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        return False
    return True


def private_key(path: Path, what: str) -> Any:  # noqa: ANN401 - any private key type cryptography reads
    data = read_file(path, what)
    if b"-----BEGIN" not in data:
        msg = f"{path} is not PEM ({what}, '-----BEGIN ... PRIVATE KEY-----'): give the key in PEM form"
        raise FileCheckError(msg)
    if b"PRIVATE KEY-----" not in data and b"BEGIN CERTIFICATE" in data:
        msg = f"{path} holds a certificate, not a private key ({what}): were cert_file and key_file swapped?"
        raise FileCheckError(msg)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        msg = (
            f"{path} is encrypted with a passphrase ({what}): the gateway needs it unencrypted"
            f" (`openssl pkey -in {path.name} -out plain.key`), readable only by the gateway's user"
        )
        raise FileCheckError(msg) from None
    except (ValueError, UnsupportedAlgorithm):
        msg = f"{path} holds no readable PEM private key ({what}): replace it with the right file"
        raise FileCheckError(msg) from None


def check_pair(key: Any, key_path: Path, cert: x509.Certificate, cert_path: Path) -> None:  # noqa: ANN401
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        msg = (
            f"{key_path} is not the private key of the certificate {cert_path} (their public keys differ): give the"
            " key that was made with this certificate (AWS IoT: its private.pem.key), or the certificate of this key"
        )
        raise FileCheckError(msg)


def check_valid(cert: x509.Certificate, path: Path, clock: Clock, renew: str) -> None:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if start <= clock.now <= end:
        return
    name = cert.subject.rfc4514_string() or "no subject"
    if clock.now < start:
        what = f"{path} ({name}) is not valid before {when(start)}; {clock.describe()}"
        todo = (
            "let the clock synchronise (check the NTP service: `timedatectl`); the certificate is fine then"
            if clock.synchronised is not True
            else f"the certificate was issued for a later date: {renew}"
        )
    else:
        what = f"{path} ({name}) expired on {when(end)}; {clock.describe()}"
        todo = (
            f"if the clock is wrong, let it synchronise (`timedatectl`); else {renew}"
            if clock.synchronised is not True
            else renew
        )
    msg = f"{what}: {todo}"
    raise FileCheckError(msg)


def check_any_valid(cas: list[x509.Certificate], path: Path, clock: Clock) -> None:
    """A bundle may hold an expired CA among current ones; only a file with none valid now is a problem."""
    problems: list[str] = []
    for ca in cas:
        try:
            check_valid(ca, path, clock, "replace the CA file with a current one")
        except FileCheckError as exc:
            problems.append(str(exc))
        else:
            return
    raise FileCheckError(problems[0] if len(problems) == 1 else f"no certificate in it is valid now: {problems[0]}")


def check_password(path: Path, what: str) -> None:
    data = read_file(path, what)
    lines = data.decode("utf-8", errors="replace").splitlines()
    if not lines or not lines[0].strip():
        msg = f"{path} is empty ({what}): write the password on its first line"
        raise FileCheckError(msg)


def when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
