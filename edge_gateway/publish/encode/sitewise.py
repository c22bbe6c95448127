"""AWS IoT SiteWise encoding: buffer records to BatchPutAssetPropertyValue request bodies (docs/sitewise.md).

Each message is published to an IoT rule (Basic Ingest topic) whose ``iotSiteWise`` action copies the body into
one BatchPutAssetPropertyValue call through substitution templates, slot by slot::

    {"entries":[{"entryId":"<seq>","propertyAlias":"/<thing>/<source>/<point>","propertyValues":[
        {"timestamp":{"timeInSeconds":<s>,"offsetInNanos":<ns>},"quality":"GOOD","value":{"doubleValue":<v>}},
        ...]}, ...]}

Contract:
- Every record comes back exactly once: in one message, or in ``rejected`` with the reason SiteWise would
  refuse it (the caller dead-letters those; nothing is dropped silently).
- A message holds one source and one value type (``double``, ``integer``, ``boolean``, ``string``): an action
  slot names its value field statically, so each type has its own rule, chosen by ``{type}`` in the topic.
- At most ``max_entries`` entries (<= 10) of at most ``max_values_per_entry`` values (<= 10) per message, as
  BatchPutAssetPropertyValue allows. Values are grouped per alias over the whole batch and packed alias after
  alias, so a message is full (100 values) unless its group runs out; an alias with more than 10 values gets
  further entries, in the same message when there is room.
- The payload is ASCII JSON of at most ``max_bytes`` bytes, sized exactly while it is built.
- Order: values of one alias keep record order (the buffer's seq order) within a message and across the list
  of messages; the list holds the messages of each (source, type) group in packing order, groups in order of
  first appearance. ``first_seq``/``last_seq``/``points`` are the lowest and highest seq and the count of
  what a message carries (its seqs need not be contiguous: other aliases, sources and types
  interleave, which is why the publisher acks a whole batch, not a message).
- ``entryId`` is the sequence number of the entry's first value: unique in a request, ``^[0-9]+$``.
- Refused locally (SiteWise or the rule action would refuse them): timestamps outside [now - 7 days,
  now + 10 minutes] narrowed by ``margin_s``; no value (``None``); integers outside 32 bits; doubles outside
  [-1e10, 1e10] (infinities included; NaN is allowed and sent as the string "NaN", the AWS JSON wire form);
  strings that are empty, longer than 1024 UTF-16 code units, not valid Unicode or with control characters;
  aliases that are empty, longer than 1000 characters or with control characters; a value that cannot fit
  in ``max_bytes`` even alone.
- ``expires_ns[i]`` is when message ``i``'s oldest value leaves that (narrowed) window: a message still unsent
  then must be encoded again from its records rather than retried.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edge_gateway.buffer.base import Record
from edge_gateway.model import Quality, Value
from edge_gateway.publish.encode.iotcore import Message

ValueType = Literal["double", "integer", "boolean", "string"]
VALUE_TYPES: tuple[ValueType, ...] = ("double", "integer", "boolean", "string")

MAX_ENTRIES = 10  # entries per BatchPutAssetPropertyValue request
MAX_VALUES_PER_ENTRY = 10  # property values (TQVs) per entry
MAX_PAST_NS = 7 * 86_400 * 10**9
MAX_FUTURE_NS = 10 * 60 * 10**9
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
DOUBLE_LIMIT = 1e10  # doubleValue must lie in [-1e10, 1e10]; NaN is allowed
MAX_STRING_UNITS = 1024
MAX_ALIAS_CHARS = 1000

DEFAULT_TOPIC = "$aws/rules/edge_sitewise_{type}/{thing}/{source}"
DEFAULT_ALIAS = "/{thing}/{source}/{point}"
DEFAULT_MAX_BYTES = 126_000
DEFAULT_MARGIN_S = 60.0

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MESSAGE_FIXED = len('{"entries":[]}')
_ENTRY_FIXED = len('{"entryId":"","propertyAlias":,"propertyValues":[]}')
_DAY_S = 86_400
_MINUTE_S = 60


@dataclass(frozen=True, slots=True)
class SiteWiseBatch:
    messages: list[Message]
    rejected: list[tuple[Record, str]]  # never to be sent, with the reason; in record order
    expires_ns: list[int]  # per message: unsent after this wall-clock time, encode its records again


def _double(v: float) -> tuple[ValueType, str] | str:
    if -DOUBLE_LIMIT <= v <= DOUBLE_LIMIT:
        return "double", repr(v)  # repr of a finite float is valid JSON
    if math.isnan(v):
        return "double", '"NaN"'  # JSON has no NaN; AWS's JSON protocol sends it as this string
    if math.isinf(v):
        return f"double {v} is infinite: SiteWise's doubleValue takes [-1e10, 1e10] and NaN, not infinity"
    return f"double {v!r} is outside SiteWise's doubleValue range [-1e10, 1e10]"


def _integer(v: int) -> tuple[ValueType, str] | str:
    if INT32_MIN <= v <= INT32_MAX:
        return "integer", str(v)
    return f"integer {v} is outside SiteWise's 32-bit integerValue range [{INT32_MIN}, {INT32_MAX}]"


def _boolean(v: bool) -> tuple[ValueType, str] | str:
    return "boolean", "true" if v else "false"


def _string(s: str) -> tuple[ValueType, str] | str:
    if not s:
        return 'empty string: the rule action reads an empty substitution as a missing value ("" is not sent)'
    if _CONTROL.search(s):
        return "string contains control characters (U+0000..U+001F, U+007F), which SiteWise's stringValue refuses"
    if s.isascii():
        units = len(s)
    else:
        try:
            units = len(s.encode("utf-16-le")) // 2
        except UnicodeEncodeError:
            return "string is not valid Unicode (a lone surrogate: the PLC sent bytes that are not UTF-8)"
    if units > MAX_STRING_UNITS:
        return f"string of {units} characters (UTF-16 units) is longer than SiteWise's {MAX_STRING_UNITS}"
    return "string", _dumps(s)


# By exact type: one dict lookup on the hot path, and bool (an int subclass) never taken for an int.
_BY_TYPE: dict[type, Callable[[Any], tuple[ValueType, str] | str]] = {
    float: _double,
    int: _integer,
    bool: _boolean,
    str: _string,
}


def _value(v: Value) -> tuple[ValueType, str] | str:
    """The value type and its JSON text, or why SiteWise cannot take the value."""
    encode = _BY_TYPE.get(type(v))
    if encode is not None:
        return encode(v)
    if v is None:
        return "no value: SiteWise needs a value even for BAD or UNCERTAIN quality (the rule action has no null)"
    for base, encode in _BY_TYPE.items():  # subclasses: IntEnum, StrEnum, ...
        if isinstance(v, base):
            return encode(base(v))
    return f"value of type {type(v).__name__} has no SiteWise type"


def _alias(template: str, thing: str, source: str, point: str) -> tuple[bool, str]:
    """(True, the alias as JSON text), or (False, why SiteWise would refuse it)."""
    alias = template.format(thing=thing, source=source, point=point)
    if not alias:
        return False, "empty property alias"
    if len(alias) > MAX_ALIAS_CHARS:
        return False, f"property alias of {len(alias)} characters is longer than SiteWise's {MAX_ALIAS_CHARS}"
    if _CONTROL.search(alias):
        return False, f"property alias {alias!r} contains control characters, which SiteWise refuses"
    return True, _dumps(alias)


def _window_reason(ts: int, now_ns: int, margin_s: float) -> str:
    if ts < now_ns:
        return (
            f"timestamp {_iso(ts)} is {_span(now_ns - ts)} old: SiteWise refuses values older than 7 days "
            f"(checked with a {margin_s:g} s margin)"
        )
    return (
        f"timestamp {_iso(ts)} is {_span(ts - now_ns)} ahead of the gateway clock: SiteWise refuses values more "
        f"than 10 minutes in the future (checked with a {margin_s:g} s margin)"
    )


def _span(ns: int) -> str:
    s = ns / 1e9
    if s >= _DAY_S:
        return f"{s / _DAY_S:.2f} days"
    if s >= _MINUTE_S:
        return f"{s / _MINUTE_S:.1f} minutes"
    return f"{s:.1f} s"


def _iso(ts_ns: int) -> str:
    return dt.datetime.fromtimestamp(ts_ns / 1e9, tz=dt.UTC).isoformat(timespec="milliseconds")


# One accepted value: (its record, timestamp ns, its JSON text).
_Tqv = tuple[Record, int, str]


class _Packer:
    """Packs the values of one (source, value type), alias after alias, into messages of entries.

    Entries hold up to ``max_values`` consecutive values of one alias; a message holds up to ``max_entries``
    entries and ``max_bytes``. Values of an alias keep their order inside and across messages.
    """

    def __init__(self, topic: str, max_bytes: int, max_entries: int, max_values: int) -> None:
        self.topic, self.max_bytes, self.max_entries, self.max_values = topic, max_bytes, max_entries, max_values
        self.messages: list[tuple[Message, int]] = []  # with the oldest timestamp in each
        self.too_large: list[tuple[Record, str]] = []
        self._start()

    def _start(self) -> None:
        self.entries: list[str] = []
        self.size = _MESSAGE_FIXED
        self.count = 0
        self.first_seq = self.last_seq = self.oldest_ns = 0

    def _close(self) -> None:
        if self.count:
            payload = f'{{"entries":[{",".join(self.entries)}]}}'.encode("ascii")
            msg = Message(self.topic, payload, self.first_seq, self.last_seq, self.count)
            self.messages.append((msg, self.oldest_ns))
        self._start()

    def pack(self, alias_json: str, values: list[_Tqv]) -> None:
        i, n = 0, len(values)
        while i < n:
            if len(self.entries) >= self.max_entries:
                self._close()
            entry_id = str(values[i][0].seq)
            fixed = _ENTRY_FIXED + len(entry_id) + len(alias_json) + (1 if self.entries else 0)
            room = self.max_bytes - self.size - fixed
            end, used = i, -1  # no comma before the first value of an entry
            while end < n and end - i < self.max_values and used + 1 + len(values[end][2]) <= room:
                used += 1 + len(values[end][2])
                end += 1
            if end == i:
                if self.count:
                    self._close()
                else:
                    need = _MESSAGE_FIXED + fixed + len(values[i][2])
                    reason = f"one value with its entry needs {need} bytes, more than max_bytes ({self.max_bytes})"
                    self.too_large.append((values[i][0], reason))
                    i += 1
                continue
            self._add_entry(entry_id, alias_json, values[i:end], fixed + used)
            i = end

    def _add_entry(self, entry_id: str, alias_json: str, values: list[_Tqv], cost: int) -> None:
        texts = ",".join(text for _, _, text in values)
        self.entries.append(f'{{"entryId":"{entry_id}","propertyAlias":{alias_json},"propertyValues":[{texts}]}}')
        self.size += cost
        seqs = [rec.seq for rec, _, _ in values]
        first, last, oldest = min(seqs), max(seqs), min(ts for _, ts, _ in values)
        if self.count == 0:
            self.first_seq, self.last_seq, self.oldest_ns = first, last, oldest
        else:
            self.first_seq = min(self.first_seq, first)
            self.last_seq = max(self.last_seq, last)
            self.oldest_ns = min(self.oldest_ns, oldest)
        self.count += len(values)

    def finish(self) -> list[tuple[Message, int]]:
        self._close()
        return self.messages


def encode_batch(
    records: Sequence[Record],
    *,
    thing: str,
    now_ns: int,
    topic_template: str = DEFAULT_TOPIC,
    alias_template: str = DEFAULT_ALIAS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_entries: int = MAX_ENTRIES,
    max_values_per_entry: int = MAX_VALUES_PER_ENTRY,
    margin_s: float = DEFAULT_MARGIN_S,
) -> SiteWiseBatch:
    """Encode records (in seq order) into SiteWise rule messages; what SiteWise would refuse comes back apart."""
    if not 1 <= max_entries <= MAX_ENTRIES or not 1 <= max_values_per_entry <= MAX_VALUES_PER_ENTRY:
        msg = (
            f"max_entries ({max_entries}) and max_values_per_entry ({max_values_per_entry}) must be 1..10: "
            "BatchPutAssetPropertyValue takes at most 10 entries of 10 values"
        )
        raise ValueError(msg)
    margin_ns = round(margin_s * 1e9)
    if not 0 <= margin_ns < MAX_FUTURE_NS:
        msg = f"margin_s ({margin_s}) must be at least 0 and less than SiteWise's 10-minute future limit"
        raise ValueError(msg)
    points, rejected = _collect(records, thing=thing, now_ns=now_ns, alias_template=alias_template, margin_s=margin_s)
    groups: dict[tuple[str, ValueType], list[tuple[str, list[_Tqv]]]] = {}  # in first-appearance order
    for (source, _), point in points.items():
        for vtype, values in point.values.items():
            groups.setdefault((source, vtype), []).append((point.alias_json, values))
    packed: list[tuple[Message, int]] = []
    for (source, vtype), aliases in groups.items():
        topic = topic_template.format(thing=thing, source=source, type=vtype)
        packer = _Packer(topic, max_bytes, max_entries, max_values_per_entry)
        for alias_json, values in aliases:
            packer.pack(alias_json, values)
        packed.extend(packer.finish())
        rejected.extend(packer.too_large)
    rejected.sort(key=lambda rr: rr[0].seq)
    expiry = MAX_PAST_NS - margin_ns
    return SiteWiseBatch([m for m, _ in packed], rejected, [oldest + expiry for _, oldest in packed])


class _Point:
    """One (source, point): its alias (JSON) or why it is refused, and its accepted values by value type."""

    __slots__ = ("alias_json", "refused", "values")

    def __init__(self, alias: tuple[bool, str]) -> None:
        ok, text = alias
        self.alias_json, self.refused = (text, "") if ok else ("", text)
        self.values: dict[ValueType, list[_Tqv]] = {}


# The fixed text after the timestamp of a GOOD value, by value type.
_GOOD_TAIL = {t: f'"quality":"GOOD","value":{{"{t}Value":' for t in VALUE_TYPES}


def _collect(
    records: Sequence[Record], *, thing: str, now_ns: int, alias_template: str, margin_s: float
) -> tuple[dict[tuple[str, str], _Point], list[tuple[Record, str]]]:
    """Check and encode each value, kept per point and value type in record order (the hot loop)."""
    margin_ns = round(margin_s * 1e9)
    oldest_ok = now_ns - MAX_PAST_NS + margin_ns
    newest_ok = now_ns + MAX_FUTURE_NS - margin_ns
    points: dict[tuple[str, str], _Point] = {}
    rejected: list[tuple[Record, str]] = []
    good = Quality.GOOD
    for rec in records:
        r = rec.reading
        ts = r.source_ts_ns
        if ts is None:
            ts = r.gateway_ts_ns
        if not oldest_ok <= ts <= newest_ok:
            rejected.append((rec, _window_reason(ts, now_ns, margin_s)))
            continue
        v = r.value
        if type(v) is float and -DOUBLE_LIMIT <= v <= DOUBLE_LIMIT:
            vtype: ValueType = "double"
            vtext = repr(v)  # repr of a finite float is valid JSON
        else:
            typed = _value(v)
            if isinstance(typed, str):
                rejected.append((rec, typed))
                continue
            vtype, vtext = typed
        point = points.get((r.source, r.point))
        if point is None:
            point = points[(r.source, r.point)] = _Point(_alias(alias_template, thing, r.source, r.point))
        if point.refused:
            rejected.append((rec, point.refused))
            continue
        q = r.quality
        tail = _GOOD_TAIL[vtype] if q is good else f'"quality":"{q.value}","value":{{"{vtype}Value":'
        sec, nanos = divmod(ts, 1_000_000_000)
        text = f'{{"timestamp":{{"timeInSeconds":{sec},"offsetInNanos":{nanos}}},{tail}{vtext}}}}}'
        values = point.values.get(vtype)
        if values is None:
            values = point.values[vtype] = []
        values.append((rec, ts, text))
    return points, rejected


def topic_rule_payload(
    value_type: ValueType,
    role_arn: str,
    *,
    max_entries: int = MAX_ENTRIES,
    max_values_per_entry: int = MAX_VALUES_PER_ENTRY,
) -> dict[str, Any]:
    """The ``topicRulePayload`` (CreateTopicRule) of the rule that ingests messages of one value type.

    The ``iotSiteWise`` action cannot iterate over an array: it has one slot per entry and value, each field
    a substitution template into the message. Slots the message does not fill evaluate to empty and are
    dropped by the action (see docs/sitewise.md for what AWS documents and what must be checked).
    """
    slots: list[dict[str, Any]] = []
    for i in range(max_entries):
        e = f"get(entries, {i})"
        values: list[dict[str, Any]] = []
        for j in range(max_values_per_entry):
            v = f"get({e}.propertyValues, {j})"
            values.append(
                {
                    "timestamp": {
                        "timeInSeconds": f"${{{v}.timestamp.timeInSeconds}}",
                        "offsetInNanos": f"${{{v}.timestamp.offsetInNanos}}",
                    },
                    "quality": f"${{{v}.quality}}",
                    "value": {f"{value_type}Value": f"${{{v}.value.{value_type}Value}}"},
                }
            )
        slots.append(
            {"entryId": f"${{{e}.entryId}}", "propertyAlias": f"${{{e}.propertyAlias}}", "propertyValues": values}
        )
    return {
        # Invoked through Basic Ingest only ($aws/rules/<name>/...): the FROM clause is optional then.
        "sql": "SELECT *",
        "awsIotSqlVersion": "2016-03-23",
        "ruleDisabled": False,
        "description": f"edge-gateway to SiteWise, {value_type} values, {max_entries}x{max_values_per_entry} slots",
        "actions": [{"iotSiteWise": {"putAssetPropertyValueEntries": slots, "roleArn": role_arn}}],
    }
