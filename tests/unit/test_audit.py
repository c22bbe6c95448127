"""The audit trail on disk: chain, verify naming the first broken entry, rotation, torn tail, reading."""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_gateway.gxp.audit import (
    CONFIG_APPLIED,
    GENESIS,
    TORN_TAIL_REMOVED,
    AuditEntry,
    AuditError,
    AuditTrail,
    changed_paths,
    entry_hash,
    file_name,
    read_entries,
    trail_files,
    verify,
)


def fill(trail: AuditTrail, n: int, start: int = 0) -> list[AuditEntry]:
    return [
        trail.append(CONFIG_APPLIED, source="shadow", shadow_version=start + i, client_token=f"t{start + i}")
        for i in range(n)
    ]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_entries_are_chained_durable_lines_anyone_can_recompute(tmp_path: Path) -> None:
    with AuditTrail(tmp_path, max_file_bytes=1 << 20, max_files=None) as trail:
        first = trail.append("gateway.started", version="1.0", pid=7)
        second = trail.append(CONFIG_APPLIED, source="file", path=tmp_path / "x.yaml", changed=["sources.0.endpoint"])
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev == GENESIS
    assert second.prev == first.hash
    assert second.fields["path"] == str(tmp_path / "x.yaml")  # stored as JSON would read it back
    stored = lines(tmp_path / file_name(1))
    assert [json.loads(x) for x in stored] == [first.as_dict(), second.as_dict()]
    doc = json.loads(stored[1])
    body = {k: v for k, v in doc.items() if k != "hash"}
    recomputed = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert recomputed == doc["hash"] == entry_hash(doc)
    assert doc["time"].endswith("Z")
    assert doc["clock"] in {"synchronised", "unsynchronised", "unknown"}
    assert stored[1] == second.to_json() + b"\n"
    result = verify(tmp_path)
    assert (result.ok, result.count, result.last_seq, result.last_hash) == (True, 2, 2, second.hash)
    assert not result.starts_midway


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    with AuditTrail(tmp_path, max_file_bytes=1 << 20, max_files=None) as trail:
        last = fill(trail, 3)[-1]
    with AuditTrail(tmp_path, max_file_bytes=1 << 20, max_files=None) as trail:
        assert (trail.last_seq, trail.last_hash) == (3, last.hash)
        nxt = trail.append("gateway.stopped", reason="SIGTERM")
    assert (nxt.seq, nxt.prev) == (4, last.hash)
    assert verify(tmp_path).count == 4


@pytest.mark.parametrize("victim", [1, 5, 9])
def test_editing_one_byte_of_a_past_entry_names_that_entry(tmp_path: Path, victim: int) -> None:
    with AuditTrail(tmp_path, max_file_bytes=1 << 20, max_files=None) as trail:
        fill(trail, 12)
    path = tmp_path / file_name(1)
    data = bytearray(path.read_bytes())
    starts = [0] + [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    # Every byte of the entry: its version number, the prev hash, its own hash, a brace, the newline.
    line = bytes(data[starts[victim - 1] : starts[victim]])
    for offset in (line.index(b'"shadow_version":') + 17, line.index(b'"prev":"') + 8, line.index(b'"hash":"') + 20, 0):
        tampered = bytearray(data)
        pos = starts[victim - 1] + offset
        tampered[pos] = ord("7") if tampered[pos] != ord("7") else ord("8")
        path.write_bytes(bytes(tampered))
        result = verify(tmp_path)
        assert not result.ok
        assert result.broken is not None
        assert (result.broken.file, result.broken.line) == (path.name, victim), result.broken
        assert result.count == victim - 1
    # The newline between two entries: they merge into one line, which is not an entry.
    tampered = bytearray(data)
    tampered[starts[victim] - 1] = ord(" ")
    path.write_bytes(bytes(tampered))
    broken = verify(tmp_path).broken
    assert broken is not None
    assert (broken.line, broken.seq) == (victim, victim)
    assert "not valid JSON" in broken.reason


def test_a_reformatted_line_with_the_same_content_is_an_edit(tmp_path: Path) -> None:
    with AuditTrail(tmp_path, max_file_bytes=1 << 20, max_files=None) as trail:
        fill(trail, 3)
    path = tmp_path / file_name(1)
    rows = lines(path)
    rows[1] = json.dumps(json.loads(rows[1])).encode() + b"\n"  # spaces after separators
    path.write_bytes(b"".join(rows))
    broken = verify(tmp_path).broken
    assert broken is not None
    assert (broken.line, broken.seq) == (2, 2)
    assert "canonical form" in broken.reason


def test_a_deleted_entry_is_a_gap_named_at_the_next_one(tmp_path: Path) -> None:
    with AuditTrail(tmp_path, max_file_bytes=1 << 20, max_files=None) as trail:
        fill(trail, 5)
    path = tmp_path / file_name(1)
    rows = lines(path)
    del rows[2]
    path.write_bytes(b"".join(rows))
    broken = verify(tmp_path).broken
    assert broken is not None
    assert (broken.line, broken.seq) == (3, 4)
    assert "follows seq 2" in broken.reason


def test_rotation_keeps_the_chain_across_files_and_archiving_old_files_starts_it_midway(tmp_path: Path) -> None:
    with AuditTrail(tmp_path, max_file_bytes=4096, max_files=None) as trail:
        entries = fill(trail, 60)
    files = trail_files(tmp_path)
    assert len(files) >= 4
    assert all(p.stat().st_size <= 4096 for _, p in files)
    # Each file after the first starts with the hash of the previous file's last entry.
    for (_, older), (_, newer) in itertools.pairwise(files):
        assert json.loads(lines(newer)[0])["prev"] == json.loads(lines(older)[-1])["hash"]
    result = verify(tmp_path)
    assert (result.ok, result.count, result.last_hash) == (True, 60, entries[-1].hash)
    assert result.files == [p.name for _, p in files]
    # The archive job took the two oldest files away.
    for _, p in files[:2]:
        p.unlink()
    result = verify(tmp_path)
    assert result.ok
    assert result.starts_midway
    first = json.loads(lines(files[2][1])[0])
    assert (result.first_seq, result.first_prev) == (first["seq"], first["prev"])
    assert result.last_seq == 60
    # A file missing in the middle is a broken chain.
    files[3][1].unlink()
    broken = verify(tmp_path).broken
    assert broken is not None
    assert (broken.file, broken.line) == (files[4][1].name, 1)


def test_max_files_deletes_the_oldest_and_reading_resumes_from_a_seq(tmp_path: Path) -> None:
    with AuditTrail(tmp_path, max_file_bytes=4096, max_files=2) as trail:
        fill(trail, 60)
        assert len(trail_files(tmp_path)) == 2
        seqs = [e.seq for e in trail.entries()]
        assert seqs == list(range(seqs[0], 61))
        assert [e.seq for e in trail.entries(after_seq=57)] == [58, 59, 60]
    assert verify(tmp_path).starts_midway


def test_entries_since_a_time(tmp_path: Path) -> None:
    with AuditTrail(tmp_path, max_file_bytes=1 << 20, max_files=None) as trail:
        old = fill(trail, 3)
        cut = datetime.fromtimestamp((old[-1].time_ns + 1) / 1e9, UTC)
        new = fill(trail, 2, start=3)
        while new[0].time_ns <= old[-1].time_ns + 1000:  # coarse clocks: make sure "since" falls between
            new = fill(trail, 2, start=5)
        got = list(trail.entries(since=cut))
    assert [e.hash for e in got][-2:] == [e.hash for e in new]
    assert all(e.time_ns >= cut.timestamp() * 1e9 - 1000 for e in got)


def test_a_torn_tail_is_reported_then_cut_and_noted_at_open(tmp_path: Path) -> None:
    with AuditTrail(tmp_path, max_file_bytes=1 << 20, max_files=None) as trail:
        last = fill(trail, 4)[-1]
    path = tmp_path / file_name(1)
    whole = path.read_bytes()
    torn_line = b'{"clock":"synchronised","event":"config.applied","fields":{"source":"sh'
    path.write_bytes(whole + torn_line)
    result = verify(tmp_path)
    assert result.ok  # the torn line was never an entry: its append never returned
    assert result.count == 4
    assert result.torn_tail is not None
    assert (result.torn_tail.line, result.torn_tail.bytes) == (5, len(torn_line))
    assert [e.seq for e in read_entries(tmp_path)] == [1, 2, 3, 4]  # reading does not cut
    with AuditTrail(tmp_path, max_file_bytes=1 << 20, max_files=None) as trail:
        note = next(trail.entries(after_seq=4))
        after = trail.append("gateway.started", version="1")
    assert note.event == TORN_TAIL_REMOVED
    assert note.prev == last.hash
    assert note.fields == {
        "file": path.name,
        "offset": len(whole),
        "bytes": len(torn_line),
        "sha256": hashlib.sha256(torn_line).hexdigest(),
        "text": torn_line.decode(),
    }
    assert after.seq == 6
    result = verify(tmp_path)
    assert (result.ok, result.count, result.torn_tail) == (True, 6, None)


def test_an_invalid_complete_last_line_is_not_cut_and_the_trail_refuses_to_open(tmp_path: Path) -> None:
    with AuditTrail(tmp_path, max_file_bytes=1 << 20, max_files=None) as trail:
        fill(trail, 3)
    path = tmp_path / file_name(1)
    rows = lines(path)
    rows[-1] = rows[-1].replace(b'"source":"shadow"', b'"source":"shaddw"')
    path.write_bytes(b"".join(rows))
    with pytest.raises(AuditError, match=r"line 3\) is not valid: its hash does not match"):
        AuditTrail(tmp_path, max_file_bytes=1 << 20, max_files=None)
    assert path.read_bytes() == b"".join(rows)  # evidence kept
    broken = verify(tmp_path).broken
    assert broken is not None
    assert broken.seq == 3


def test_an_empty_newest_file_after_a_crash_at_rotation_continues_the_chain(tmp_path: Path) -> None:
    with AuditTrail(tmp_path, max_file_bytes=1 << 20, max_files=None) as trail:
        last = fill(trail, 2)[-1]
    (tmp_path / file_name(2)).touch()
    with AuditTrail(tmp_path, max_file_bytes=1 << 20, max_files=None) as trail:
        nxt = trail.append("gateway.started")
    assert (nxt.seq, nxt.prev) == (3, last.hash)
    assert lines(tmp_path / file_name(2)) == [nxt.to_json() + b"\n"]
    assert verify(tmp_path).count == 3


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 4096"):
        AuditTrail(tmp_path, max_file_bytes=100, max_files=None)
    with pytest.raises(ValueError, match="max_files"):
        AuditTrail(tmp_path, max_file_bytes=4096, max_files=0)
    with AuditTrail(tmp_path, max_file_bytes=4096, max_files=None) as trail:
        with pytest.raises(ValueError, match=r"area\.what"):
            trail.append("Config Applied")
        with pytest.raises(ValueError, match="Out of range float"):
            trail.append("config.applied", value=float("nan"))
        assert trail.last_seq == 0
    assert verify(tmp_path).count == 0


def test_changed_paths() -> None:
    before = {"sources": [{"name": "a", "endpoint": "x"}], "status": {"interval_s": 2}, "gone": 1}
    after = {"sources": [{"name": "a", "endpoint": "y"}], "status": {"interval_s": 2, "heartbeat_s": 5}}
    assert changed_paths(before, after) == ["gone", "sources.0.endpoint", "status.heartbeat_s"]
    assert changed_paths({"sources": [1]}, {"sources": [1, 2]}) == ["sources.1"]
    assert changed_paths({"sources": [1, 2, 3]}, {"sources": [1]}) == ["sources.1", "sources.2"]
    assert changed_paths(before, before) == []


def test_one_writer_per_directory(tmp_path: Path) -> None:
    with AuditTrail(tmp_path, max_file_bytes=4096, max_files=None) as trail:
        trail.append("gateway.started")
        with pytest.raises(AuditError, match="open for writing by another process"):
            AuditTrail(tmp_path, max_file_bytes=4096, max_files=None)
        assert verify(tmp_path).count == 1  # readers need no lock
    with AuditTrail(tmp_path, max_file_bytes=4096, max_files=None) as trail:  # released by close
        assert trail.append("gateway.stopped").seq == 2
