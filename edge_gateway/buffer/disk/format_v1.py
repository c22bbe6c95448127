"""Format 1, written before format 2: still opened, read and expired, never written.

    record  = header payload
    header  = <u32 payload length> <u32 CRC-32 of (u64 seq little-endian + payload)> <u64 seq>  (16 bytes)
    payload = codec kind 1 (JSON)

Contract:
- A segment holds one format. ``segment_format`` tells them apart by the first record: format 2 when it passes
  its format-2 check, else format 1 when bytes 8..16 hold the segment's first_seq, else 2 (as is an empty
  segment). The writer never appends to a format-1 segment: the first append after an upgrade starts a new one.
- ``read_v1`` checks every header it passes and the CRC of every record it hands out; a bad one quarantines
  the segment (``Want.quarantine``) and the read goes on after it.
- ``scan_v1`` is ``recovery``'s open-time scan of a format-1 active segment, with the same answer as its
  format-2 counterpart.
"""

from __future__ import annotations

import struct
import zlib
from itertools import repeat
from typing import BinaryIO

from edge_gateway.buffer.base import Record
from edge_gateway.buffer.codec import decode_readings
from edge_gateway.buffer.disk.record import HEADER, LENGTH, MAX_RECORD, chain
from edge_gateway.buffer.disk.state import FORMAT_1, FORMAT_2, Segment, Want

V1_HEADER = struct.Struct("<IIQ")
_SEQ = struct.Struct("<Q")
_V1_SEQ_AT = 8  # offset of the seq field in a format 1 header; the payload follows it directly


def _v1_crc(seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq)))


def segment_format(head: bytes, first_seq: int) -> int:
    """1 or 2: the record format of a segment whose file starts with ``head`` (its first record, whole)."""
    if len(head) >= LENGTH.size:
        (n,) = LENGTH.unpack_from(head)
        end = HEADER.size + n
        if end <= len(head) and zlib.crc32(memoryview(head)[:end], chain(first_seq - 1)) == chain(first_seq):
            return FORMAT_2
    if len(head) >= V1_HEADER.size and V1_HEADER.unpack_from(head)[2] == first_seq:
        return FORMAT_1
    return FORMAT_2


def first_record(f: BinaryIO) -> bytes:
    """The first record of a segment file, whole when its length is plausible (for ``segment_format``)."""
    head = f.read(V1_HEADER.size)
    if len(head) >= LENGTH.size and (n := LENGTH.unpack_from(head)[0]) <= MAX_RECORD:
        head += f.read(max(0, HEADER.size + n - len(head)))
    return head


def read_v1(seg: Segment, f: BinaryIO, size: int, start: tuple[int, int], want: Want) -> tuple[int, int]:
    """The format 1 reader: payloads are gathered, then decoded in one go."""
    found: list[tuple[int, bytes]] = []
    result = _scan_v1_records(seg, f, size, start, (want, found))
    readings = decode_readings([payload for _, payload in found])
    want.records.extend(map(tuple.__new__, repeat(Record), zip([s for s, _ in found], readings, strict=True)))
    return result


def _scan_v1_records(
    seg: Segment, f: BinaryIO, size: int, start: tuple[int, int], into: tuple[Want, list[tuple[int, bytes]]]
) -> tuple[int, int]:
    seq, offset = start
    want, found = into
    scan_seq = seg.first_seq if offset == 0 else seq
    sparse = bool(want.acks.ranges)
    limit, stop_at = want.limit - len(want.records), want.end
    unpack, crc32, hsize = V1_HEADER.unpack_from, zlib.crc32, V1_HEADER.size
    while offset + hsize <= size and len(found) < limit:
        f.seek(offset)
        chunk = f.read(min(want.chunk_bytes, size - offset))
        view = memoryview(chunk)
        pos, n, room = 0, len(chunk), limit - len(found)
        while pos + hsize <= n and room:
            length, crc, rec_seq = unpack(chunk, pos)
            end = pos + hsize + length
            if rec_seq != scan_seq or length > MAX_RECORD or offset + end > size:
                want.quarantine(seg, f"record {scan_seq} has a bad header at byte {offset + pos}")
                return seg.last_seq + 1, 0
            if rec_seq >= stop_at:
                return rec_seq, offset + pos  # the lane ends here; the cursor points at it
            if end > n:
                if pos == 0:  # a single record larger than the chunk
                    view.release()
                    chunk += f.read(end - n)
                    view, n = memoryview(chunk), len(chunk)
                else:
                    break
            # seq is never inside the acked prefix; only acked ranges beyond it need a look-up.
            if rec_seq >= seq and (not sparse or want.acks.next_unacked(rec_seq) == rec_seq):
                # The header ends with the seq, so seq + payload are contiguous: one CRC call.
                if crc32(view[pos + _V1_SEQ_AT : end]) != crc:
                    want.quarantine(seg, f"record {rec_seq} fails its CRC at byte {offset + pos}")
                    return seg.last_seq + 1, 0
                found.append((rec_seq, chunk[pos + hsize : end]))
                room -= 1
            pos = end
            scan_seq += 1
        offset += pos
    if (
        offset + hsize > size
        and len(found) < limit
        and want.ended_early(seg, scan_seq, seg.last_seq, f"the file ends at byte {size}")
    ):
        return seg.last_seq + 1, 0
    return max(seq, scan_seq), offset


def scan_v1(data: bytes, first_seq: int) -> tuple[int, int, int]:
    """``recovery.scan_v2`` for a format 1 segment (seq in every header)."""
    good, last_seq = 0, first_seq - 1
    hsize = V1_HEADER.size
    torn = True
    while good + hsize <= len(data):
        length, crc, seq = V1_HEADER.unpack_from(data, good)
        end = good + hsize + length
        if end > len(data) and seq == last_seq + 1 and length <= MAX_RECORD:
            break  # incomplete last record: an interrupted write
        if seq != last_seq + 1 or length > MAX_RECORD or _v1_crc(seq, data[good + hsize : end]) != crc:
            torn = end >= len(data)  # a bad last record may be a half-persisted write too
            break
        good, last_seq = end, seq
    if torn or good == len(data):
        return good, last_seq, last_seq + 1
    pos, seen = good, last_seq
    while pos + hsize <= len(data):
        length, _, seq = V1_HEADER.unpack_from(data, pos)
        if seq != seen + 1 or length > MAX_RECORD:
            break
        pos, seen = pos + hsize + length, seq
    # A damaged record whose header still names the next seq must count as damage, not as torn.
    return good, last_seq, max(seen + 1 + max(0, len(data) - pos) // hsize, last_seq + 2)
