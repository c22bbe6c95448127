import json
from pathlib import Path

from edge_gateway.buffer.base import Record
from edge_gateway.model import Quality, Reading
from edge_gateway.publish.deadletter import DeadLetterFile, message_entry, reading_entry
from edge_gateway.publish.encode.iotcore import Message


def _record(seq: int) -> Record:
    return Record(seq, Reading("plc", "plc.t", seq * 1.5, Quality.GOOD, 1_700_000_000_000_000_000 + seq))


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_entries_are_json_lines_with_the_reason_and_the_data(tmp_path: Path) -> None:
    dl = DeadLetterFile(tmp_path / "dead-letter.jsonl")
    dl.write([reading_entry("sitewise", _record(7), "older than 7 days")])
    dl.write([message_entry("cloud", Message("dt/gw/plc", b'{"v":1}', 3, 9, 4), "PUBACK 135 NOT_AUTHORIZED")])
    first, second = _lines(tmp_path / "dead-letter.jsonl")
    assert str(first.pop("at")).endswith("Z")
    assert first == {
        "kind": "reading",
        "dest": "sitewise",
        "reason": "older than 7 days",
        "seq": 7,
        "source": "plc",
        "point": "plc.t",
        "value": 10.5,
        "quality": "GOOD",
        "status": None,
        "ts_ns": 1_700_000_000_000_000_007,
    }
    assert second["payload"] == '{"v":1}'
    assert (second["first_seq"], second["last_seq"], second["points"]) == (3, 9, 4)
    assert (dl.stats.entries, dl.stats.failed) == (2, 0)


def test_rotation_keeps_the_disk_use_bounded_and_counts_what_it_discards(tmp_path: Path) -> None:
    path = tmp_path / "dead-letter.jsonl"
    dl = DeadLetterFile(path, max_file_bytes=2000, max_files=2)
    for i in range(1, 201):
        dl.write([reading_entry("sitewise", _record(i), "too old")])
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["dead-letter.jsonl", "dead-letter.jsonl.1", "dead-letter.jsonl.2"]
    assert all(f.stat().st_size <= 2000 for f in files)
    kept = [
        int(str(e["seq"]))
        for f in (path.with_name(path.name + ".2"), path.with_name(path.name + ".1"), path)
        for e in _lines(f)
    ]
    assert kept == list(range(kept[0], 201))  # newest kept, in order
    assert dl.stats.entries == 200
    assert dl.stats.discarded == 200 - len(kept)
    assert dl.stats.rotations > 2


def test_an_unwritable_location_is_counted_never_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    dl = DeadLetterFile(blocker / "dead-letter.jsonl")
    dl.write([reading_entry("sitewise", _record(1), "too old"), reading_entry("sitewise", _record(2), "too old")])
    assert (dl.stats.entries, dl.stats.failed) == (0, 2)
    blocker.unlink()
    dl.write([reading_entry("sitewise", _record(3), "too old")])  # the volume is back
    assert (dl.stats.entries, dl.stats.failed) == (1, 2)
    assert [e["seq"] for e in _lines(blocker / "dead-letter.jsonl")] == [3]


def test_a_torn_last_line_from_a_power_cut_is_closed_before_the_next_entry(tmp_path: Path) -> None:
    path = tmp_path / "dead-letter.jsonl"
    path.write_bytes(b'{"kind":"reading","seq":1}\n{"kind":"read')  # the second write was cut short
    dl = DeadLetterFile(path)
    dl.write([reading_entry("cloud", _record(2), "r")])
    dl.write([reading_entry("cloud", _record(3), "r")])
    lines = path.read_bytes().splitlines()
    assert lines[1] == b'{"kind":"read'  # kept as it was, for a person to see, on a line of its own
    assert [json.loads(line)["seq"] for line in (lines[0], *lines[2:])] == [1, 2, 3]
