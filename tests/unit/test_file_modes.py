"""Every file the gateway creates has its mode from creation, and temp files are not followed through links.

Each kind of file is made through its real code path under umask 0 (so nothing but the code decides the mode).
"From creation" is checked with an audit hook: a chmod that *removes* permission bits from a file means the
file existed with a wider mode first (the window in which a private key is world-readable); none may happen.
Modes per kind: docs/security.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.buffer.disk import DiskBuffer
from edge_gateway.control.saved import AppliedConfig
from edge_gateway.gxp.audit import LOCK_FILE, AuditTrail
from edge_gateway.gxp.provenance import Epochs
from edge_gateway.model import Quality, Reading
from edge_gateway.observe import status
from edge_gateway.publish.deadletter import DeadLetterFile
from edge_gateway.sources.opcua.config import OpcUaSecurity
from edge_gateway.sources.opcua.security import SecuritySetupError, check_server_certificate, ensure_client_certificate
from edge_gateway.util.files import open_append, write_durably, write_json_durably

_WATCHES: list[list[str]] = []  # the open watches; the hook (installed once per process) reports to the last


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    if not _WATCHES or event != "os.chmod":
        return
    target, new_mode = args[0], args[1]
    with contextlib.suppress(OSError, TypeError, ValueError):
        before = stat.S_IMODE(os.stat(target).st_mode)  # noqa: PTH116 - target may be a file descriptor
        if before & ~new_mode:
            _WATCHES[-1].append(f"{target}: {before:#o} -> {new_mode:#o}")


sys.addaudithook(_audit_hook)  # at import, once per process; it cannot be removed: inert while no watch is open


@pytest.fixture
def umask0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def never_narrowed() -> Iterator[None]:
    """Fail if a file or directory has permission bits taken away (i.e. it was created too open)."""
    found: list[str] = []
    _WATCHES.append(found)
    try:
        yield
    finally:
        _WATCHES.pop()
    assert found == [], f"created with a wider mode, narrowed afterwards: {found}"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def modes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): mode(p) for p in sorted(directory.rglob("*"))}


@pytest.mark.usefixtures("umask0")
def test_durable_writes_are_owner_only_by_default_and_new_folders_have_their_modes(tmp_path: Path) -> None:
    with never_narrowed():
        write_json_durably(tmp_path / "data" / "state" / "recorder.json", {"seq": 1})  # recorder, publish state
        write_durably(tmp_path / "data" / "keys" / "k.pem", b"secret", dir_mode=0o700)
    assert modes(tmp_path / "data") == {
        "keys": 0o700,
        "keys/k.pem": 0o600,
        "state": 0o750,
        "state/recorder.json": 0o600,
    }
    assert mode(tmp_path / "data") == 0o750  # a parent made on the way: the group may pass, the leaf decides


@pytest.mark.usefixtures("umask0")
def test_the_status_file_last_heartbeat_saved_config_and_epochs_are_owner_and_group(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with never_narrowed():
        status.atomic_write(data / "status.json", b"{}")  # what StatusReporter.fresh and the heartbeat call
        status.atomic_write(data / "status.heartbeat.json", b"{}")
        AppliedConfig(3, {"sources": []}, "sha256:x").save(data / "shadow" / "edge-gateway.applied.json")
        Epochs(data / "epochs.json").start(1, "sha256:y")
    assert modes(data) == {
        "epochs.json": 0o640,
        "shadow": 0o750,
        "shadow/edge-gateway.applied.json": 0o640,
        "status.heartbeat.json": 0o640,
        "status.json": 0o640,
    }


@pytest.mark.usefixtures("umask0")
def test_audit_trail_and_dead_letter_files_are_owner_and_group(tmp_path: Path) -> None:
    with never_narrowed():
        with AuditTrail(tmp_path / "audit", max_file_bytes=1 << 20) as trail:
            trail.append("gateway.started", version="1")
        DeadLetterFile(tmp_path / "dl" / "dead-letter.jsonl").write([{"topic": "dt/x", "reason": "test"}])
    assert mode(tmp_path / "audit") == 0o750
    assert modes(tmp_path / "audit") == dict.fromkeys(
        [LOCK_FILE, *(p.name for p in (tmp_path / "audit").glob("*.jsonl"))], 0o640
    )
    assert len(list((tmp_path / "audit").glob("*.jsonl"))) == 1
    assert modes(tmp_path / "dl") == {"dead-letter.jsonl": 0o640}
    assert mode(tmp_path / "dl") == 0o750


@pytest.mark.usefixtures("umask0")
async def test_buffer_segments_and_ledger_are_owner_only(tmp_path: Path) -> None:
    with never_narrowed():
        buf = DiskBuffer(tmp_path / "buffer", ["cloud"], segment_bytes=4096)
        await buf.append(
            [Reading("plc", "plc.counter", i, Quality.GOOD, 1_700_000_000_000_000_000 + i) for i in range(3)]
        )
        await buf.close()
    found = modes(tmp_path / "buffer")
    assert mode(tmp_path / "buffer") == 0o700
    assert "ledger.json" in found
    assert any(name.endswith(".seg") for name in found)
    assert set(found.values()) == {0o600}, found


@pytest.mark.usefixtures("umask0")
async def test_the_opc_ua_client_key_is_owner_only_from_its_creation(tmp_path: Path) -> None:
    security = OpcUaSecurity(mode="Sign", cert_dir=tmp_path / "var" / "pki", application_uri="urn:gw:modes")
    with never_narrowed():
        identity = await ensure_client_certificate(security)
    assert modes(tmp_path / "var") == {"pki": 0o700, "pki/client_cert.der": 0o600, "pki/client_key.pem": 0o600}
    assert mode(tmp_path / "var") == 0o750
    # A server certificate refused (copy in rejected/) and one trusted on first use (saved in trusted/).
    der = identity.cert_file.read_bytes()
    with never_narrowed(), pytest.raises(SecuritySetupError, match="not in the trust list"):
        check_server_certificate(der, security, "opc.tcp://127.0.0.1:4840")
    tofu = security.model_copy(update={"trust_on_first_use": True})
    with never_narrowed():
        await asyncio.to_thread(
            functools.partial(check_server_certificate, server_uri="urn:gw:modes"),
            der,
            tofu,
            "opc.tcp://127.0.0.1:4840",
        )
    found = modes(tmp_path / "var" / "pki")
    assert {name: m for name, m in found.items() if name.startswith(("rejected", "trusted"))} == {
        "rejected": 0o700,
        f"rejected/{next((tmp_path / 'var/pki/rejected').iterdir()).name}": 0o600,
        "trusted": 0o700,
        f"trusted/{next((tmp_path / 'var/pki/trusted').iterdir()).name}": 0o600,
    }


def test_modes_are_exact_under_a_strict_umask_too(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        status.atomic_write(tmp_path / "d" / "status.json", b"{}")
    finally:
        os.umask(old)
    assert mode(tmp_path / "d" / "status.json") == 0o640  # the operator's group can still read it
    assert mode(tmp_path / "d") == 0o750


@pytest.mark.usefixtures("umask0")
def test_a_wider_existing_file_is_replaced_by_one_with_the_right_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    path.chmod(0o666)
    write_durably(path, b"new")
    assert (path.read_bytes(), mode(path)) == (b"new", 0o600)


# ---- temp files and links ----------------------------------------------------------------------------------


@pytest.mark.parametrize("write", [write_durably, status.atomic_write], ids=["durable", "status"])
def test_a_link_planted_at_the_temp_path_is_not_followed(tmp_path: Path, write: Any) -> None:
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    path = tmp_path / "data" / "state.json"
    path.parent.mkdir()
    (path.parent / "state.json.tmp").symlink_to(victim)
    write(path, b"new")
    assert victim.read_bytes() == b"precious"
    assert path.read_bytes() == b"new"
    assert not path.is_symlink()
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]  # the planted link is gone


def test_a_link_at_the_file_itself_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    path = tmp_path / "status.json"
    path.symlink_to(victim)
    status.atomic_write(path, b"{}")
    assert victim.read_bytes() == b"precious"
    assert (path.is_symlink(), path.read_bytes()) == (False, b"{}")


def test_a_crash_leftover_temp_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "ledger.json.tmp").write_bytes(b"half a ledg")
    write_durably(tmp_path / "ledger.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]


def test_appending_through_a_link_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    path = tmp_path / "dead-letter.jsonl"
    path.symlink_to(victim)
    with pytest.raises(OSError, match=r"dead-letter\.jsonl is a symbolic link: .* remove it") as info:
        open_append(path, 0o640)
    assert info.value.errno == errno.ELOOP
    DeadLetterFile(path).write([{"topic": "dt/x"}])  # logs and counts the loss; never writes through
    assert victim.read_bytes() == b"precious"
