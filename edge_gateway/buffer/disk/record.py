"""Format-2 records: their framing and the chained CRC that binds each record to its sequence number.

    record = <u32 n> payload <u32 crc>           crc = CRC-32 of (<u32 n> payload) from chain(seq - 1), XOR seq

Contract (the package docstring says why it holds):
- A valid record numbered ``seq`` satisfies crc32(record, chain(seq - 1)) == chain(seq), so a run of records
  k..j checks with one call: crc32(run, chain(k - 1)) == chain(j). The seq itself is never stored.
- ``frame_batch`` (the writer's hot path) and ``frame`` (one record) produce the same bytes.
- A reading the codec cannot store is framed as BAD with the reason, never dropped.
- ``walk`` steps over lengths only (no CRC); ``check_each`` checks record by record and stops at the first bad
  one. Neither looks past ``stop``. Nothing here touches a file.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Sequence

from edge_gateway.buffer.codec import encode_reading
from edge_gateway.model import Quality, Reading

# The package's logger: log lines keep the logger name they had before disk.py became a package.
_log = logging.getLogger(__package__)

LENGTH = struct.Struct("<I")  # format 2: before the payload
CRC = struct.Struct("<I")  # format 2: after the payload
# Format 2 framing seen from a record's start, for code that walks a segment: HEADER.size is the framing
# per record (the length before the payload plus the CRC after it, hence "4x") and
# HEADER.unpack_from(segment, record_start)[0] the payload length.
HEADER = struct.Struct("<I4x")
U32_MASK = 0xFFFF_FFFF
# crc32(message + its CRC) is this constant for every message and start value (the CRC-32 residue);
# XORing d into the stored CRC moves the state after it by crc32(d) ^ crc32(0), whatever the message.
_CHAIN_BASE = 0x2144_DF1C ^ zlib.crc32(bytes(4))
MAX_RECORD = 16 << 20  # a longer payload length is taken for damage when reading
NO_END = 1 << 63  # beyond every sequence number and length: "no end"


def chain(seq: int) -> int:
    """The CRC-32 state after a valid format-2 record numbered ``seq``: the start of the next one's CRC."""
    return _CHAIN_BASE ^ zlib.crc32(CRC.pack(seq & U32_MASK))


def frame(seq: int, payload: bytes) -> bytes:
    """The format-2 record of ``payload`` numbered ``seq``."""
    body = LENGTH.pack(len(payload)) + payload
    return body + CRC.pack(zlib.crc32(body, chain(seq - 1)) ^ (seq & U32_MASK))


def frame_batch(readings: Sequence[Reading], seq: int) -> tuple[bytearray, int]:
    """The records of ``readings`` numbered from ``seq``, back to back, and the seq after the last one."""
    data = bytearray()
    state = chain(seq - 1)
    pack_length, pack_crc, crc32, encode = LENGTH.pack, CRC.pack, zlib.crc32, encode_reading
    for r in readings:
        try:
            payload = encode(r)
        except (TypeError, ValueError) as exc:
            payload = _encode_as_bad(r, exc)
        body = pack_length(len(payload)) + payload
        crc = crc32(body, state)
        trailer = pack_crc(crc ^ (seq & U32_MASK))
        state = crc32(trailer, crc)  # == chain(seq), without packing seq
        data += body
        data += trailer
        seq += 1
    return data, seq


def _encode_as_bad(r: Reading, exc: Exception) -> bytes:
    """A reading the codec cannot store (a value of the wrong type, say) is stored as BAD, never dropped."""
    _log.warning("buffer: %s/%s value cannot be stored (%s); stored as BAD", r.source, r.point, exc)
    return encode_reading(r._replace(value=None, quality=Quality.BAD, status=f"unstorable value: {exc}"))


def walk(data: bytes, pos: int, stop: int, limit: int = NO_END) -> tuple[int, int]:
    """Step over up to ``limit`` whole format-2 records from ``pos``: (where it stopped, how many)."""
    unpack, hsize = LENGTH.unpack_from, HEADER.size
    count = 0
    while count < limit and pos + LENGTH.size <= stop:
        end = pos + hsize + unpack(data, pos)[0]
        if end > stop:
            break
        pos = end
        count += 1
    return pos, count


def check_each(view: memoryview, pos: int, stop: int, seq: int) -> tuple[int, int]:
    """Check format-2 records from ``pos`` (numbered from ``seq``) one by one: (end of the good ones, count)."""
    count = 0
    while pos + LENGTH.size <= stop:
        end = pos + HEADER.size + LENGTH.unpack_from(view, pos)[0]
        if end > stop or zlib.crc32(view[pos:end], chain(seq + count - 1)) != chain(seq + count):
            break
        pos = end
        count += 1
    return pos, count
