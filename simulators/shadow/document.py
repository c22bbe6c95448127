"""The AWS IoT Device Shadow service's document logic, without MQTT: what ``simulators.shadow`` serves.

``ShadowStore`` holds every shadow and applies get/update/delete requests to it. It is pure and
deterministic: no I/O, no clock (the caller passes each request's epoch-second ``timestamp``), so the
same requests with the same timestamps give the same documents. ``get``/``update``/``delete`` return an
``Outcome`` (the accepted answer and the events to publish after it, as ``(topic suffix, payload)``) or
raise ``ShadowRequestError``; ``handle`` turns a refusal into a rejected Outcome.

Protocol, as AWS documents it (developer guide: "Device Shadow MQTT topics", "Device Shadow service
documents", "Device Shadow error messages", "Interacting with shadows") and as the real service answers
(outputs published with the AWS IoT Device SDK shadow samples):

- Topics: prefix ``$aws/things/<thing>/shadow/name/<shadow>`` (named) or ``$aws/things/<thing>/shadow``
  (classic). Requests on ``<prefix>/get|update|delete``; answers on ``<prefix>/<op>/accepted`` or
  ``/rejected``; after an accepted update, ``<prefix>/update/documents`` then (maybe) ``/update/delta``.
- Stored document: ``state.desired`` and ``state.reported`` (each present only when non-empty),
  ``metadata`` mirroring them with ``{"timestamp": epoch_s}`` per leaf (an array's metadata is a list, one
  entry per element), ``version`` (1 on creation, +1 per accepted update; a deleted shadow keeps its
  version, so re-creating it continues from there).
- Update: objects merge key by key, arrays and scalars replace the whole value, ``null`` deletes a key,
  ``"desired": null`` deletes the section, ``"state": null`` both. Objects left empty disappear (the
  state never holds ``{}``). A ``version`` that is not the current one is 409 "Version conflict" (the
  current version of a shadow that does not exist is that of the deleted one, else 0).
- Responses: update/accepted echoes the request's state (nulls included) with metadata for what it set;
  get/accepted is the whole document plus ``state.delta`` when non-empty; delete/accepted is
  ``{"version", "timestamp"}``; documents is ``{"previous" (null on creation), "current", "timestamp"}``;
  delta is ``{"version", "timestamp", "state", "metadata"}`` with the metadata of the desired leaves.
  Every response carries ``clientToken`` when the request had a valid one.
- Delta: the desired leaves that differ from reported, walking objects recursively; arrays compare as
  whole values; ``true`` is not ``1`` but ``1`` is ``1.0``. ``/update/delta`` is published when the delta
  is non-empty and the request touched a path in it: "the request state document contains different
  values for desired and reported" (so a reported update that moves away from desired publishes one, as
  the real service does; an unrelated update leaves a standing delta unannounced).
- Errors ``{"code", "message", "clientToken"}`` with AWS's messages: 400 (Invalid JSON, Missing required
  node: state, State/Desired/Reported node must be an object, Invalid version, Invalid clientToken (over
  64 bytes), JSON contains too many levels of nesting; maximum is 6, State contains an invalid node),
  404 "No shadow exists with name: '<name>'", 409, 413 "The payload exceeds the maximum size allowed"
  (desired + reported, compact JSON, metadata not counted; 8 KB by default), 415 (not UTF-8); and, from
  ``ShadowService`` rather than the store, 429 when its optional per-shadow rate limit is exceeded and 500
  on a bug in the stand-in. The real service leaves ``timestamp`` out of the error documents it is seen
  sending (404, 409), so this one never sends it.

Choices where AWS says nothing: a null inside an array is 400 "Invalid JSON"; nesting counts objects and
arrays below desired/reported; a rejected request changes nothing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, TypeAlias

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
JsonObject: TypeAlias = "dict[str, JsonValue]"

DEFAULT_MAX_DOCUMENT_BYTES: Final = 8 * 1024
MAX_DEPTH: Final = 6
MAX_CLIENT_TOKEN_BYTES: Final = 64
SECTIONS: Final = ("desired", "reported")
OPERATIONS: Final = ("get", "update", "delete")

INVALID_JSON: Final = "Invalid JSON"
MISSING_STATE: Final = "Missing required node: state"
STATE_NOT_OBJECT: Final = "State node must be an object"
SECTION_NOT_OBJECT: Final = {"desired": "Desired node must be an object", "reported": "Reported node must be an object"}
INVALID_VERSION: Final = "Invalid version"
INVALID_CLIENT_TOKEN: Final = "Invalid clientToken"  # noqa: S105 - an error message, not a secret
TOO_DEEP: Final = f"JSON contains too many levels of nesting; maximum is {MAX_DEPTH}"
INVALID_NODE: Final = "State contains an invalid node"
VERSION_CONFLICT: Final = "Version conflict"
TOO_LARGE: Final = "The payload exceeds the maximum size allowed"
NOT_UTF8: Final = "Unsupported documented encoding; supported encoding is UTF-8"  # sic, AWS's wording
TOO_MANY_REQUESTS: Final = "Too Many Requests"
INTERNAL_FAILURE: Final = "Internal service failure"


class ShadowRequestError(Exception):
    """A refused request: ``code`` and ``message`` as the service publishes them on ``.../rejected``."""

    def __init__(self, code: int, message: str, client_token: str | None = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.client_token = client_token

    def payload(self) -> JsonObject:
        doc: JsonObject = {"code": self.code, "message": self.message}
        if self.client_token is not None:
            doc["clientToken"] = self.client_token
        return doc


@dataclass(frozen=True, slots=True)
class ShadowKey:
    thing: str
    name: str | None = None  # None: the classic (unnamed) shadow

    @property
    def topic_prefix(self) -> str:
        base = f"$aws/things/{self.thing}/shadow"
        return base if self.name is None else f"{base}/name/{self.name}"

    def __str__(self) -> str:
        return self.thing if self.name is None else f"{self.thing}/{self.name}"


def parse_topic(topic: str) -> tuple[ShadowKey, str] | None:
    """``(shadow, operation)`` of a request topic, or None for anything else."""
    parts = topic.split("/")
    if parts[:2] != ["$aws", "things"] or len(parts) < 5 or parts[3] != "shadow":
        return None
    if len(parts) == 5 and parts[4] in OPERATIONS:
        return ShadowKey(parts[2]), parts[4]
    if len(parts) == 7 and parts[4] == "name" and parts[6] in OPERATIONS:
        return ShadowKey(parts[2], parts[5]), parts[6]
    return None


def json_equal(a: JsonValue, b: JsonValue) -> bool:
    """JSON equality: ``true`` differs from ``1`` (Python says equal), ``1`` equals ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def merge_section(current: JsonObject, patch: JsonObject) -> JsonObject:
    """``patch`` applied to ``current`` (both left as they are): objects merge key by key, ``null`` deletes
    its key, anything else (arrays too) replaces the value; objects left empty are dropped."""
    out = dict(current)
    for key, value in patch.items():
        old = out.get(key)
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            merged = merge_section(old if isinstance(old, dict) else {}, value)
            if merged:
                out[key] = merged
            else:
                out.pop(key, None)
        else:
            out[key] = copy.deepcopy(value)
    return out


def metadata_of(value: JsonValue, timestamp: int) -> JsonValue:
    """Metadata for a value set at ``timestamp``: the same shape with ``{"timestamp": t}`` at each leaf."""
    if isinstance(value, dict):
        return {k: metadata_of(v, timestamp) for k, v in value.items()}
    if isinstance(value, list):
        return [metadata_of(v, timestamp) for v in value]
    return {"timestamp": timestamp}


def merge_metadata(state: JsonObject, metadata: JsonObject, patch: JsonObject, timestamp: int) -> JsonObject:
    """Metadata of ``merge_section(state, patch)``: what the patch sets gets ``timestamp``, the rest keeps its own."""
    out = dict(metadata)
    for key, value in patch.items():
        old, old_meta = state.get(key), out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            out[key] = merge_metadata(old, old_meta if isinstance(old_meta, dict) else {}, value, timestamp)
        else:
            out[key] = metadata_of(value, timestamp)
    return restrict_metadata(merge_section(state, patch), out)


def restrict_metadata(state: JsonObject, metadata: JsonObject) -> JsonObject:
    """``metadata`` cut to the keys ``state`` has (drops what a null or an emptied object removed)."""
    out: JsonObject = {}
    for key, value in state.items():
        meta = metadata.get(key)
        if isinstance(value, dict):
            out[key] = restrict_metadata(value, meta if isinstance(meta, dict) else {})
        else:
            out[key] = meta if meta is not None else {}
    return out


def compute_delta(desired: JsonObject, reported: JsonObject) -> JsonObject:
    """The desired fields that reported lacks or holds another value for, with their path from the root."""
    out: JsonObject = {}
    for key, want in desired.items():
        if key not in reported:
            out[key] = copy.deepcopy(want)
            continue
        have = reported[key]
        if isinstance(want, dict) and isinstance(have, dict):
            sub = compute_delta(want, have)
            if sub:
                out[key] = sub
        elif not json_equal(want, have):
            out[key] = copy.deepcopy(want)
    return out


def delta_metadata(delta: JsonObject, desired_metadata: JsonObject) -> JsonObject:
    """The desired metadata of the delta's leaves (AWS: "its values are equal to the metadata in desired")."""
    out: JsonObject = {}
    for key, value in delta.items():
        meta = desired_metadata.get(key)
        out[key] = delta_metadata(value, meta) if isinstance(value, dict) and isinstance(meta, dict) else meta
    return out


def touched_paths(patch: JsonObject | None, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Paths an update sets or deletes; a null section touches everything under it (the empty path)."""
    if patch is None:
        yield prefix
        return
    for key, value in patch.items():
        if isinstance(value, dict) and value:
            yield from touched_paths(value, (*prefix, key))
        else:
            yield (*prefix, key)


def path_in_delta(path: tuple[str, ...], delta: JsonObject) -> bool:
    """True when the delta has a leaf at, above or below ``path`` (``delta`` non-empty)."""
    node: JsonValue = delta
    for key in path:
        if not isinstance(node, dict):
            return True
        if key not in node:
            return False
        node = node[key]
    return True


def compact_size(value: JsonValue) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _depth(value: JsonValue) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _null_in_array(value: JsonValue, *, in_array: bool = False) -> bool:
    if value is None:
        return in_array
    if isinstance(value, dict):
        return any(_null_in_array(v) for v in value.values())
    if isinstance(value, list):
        return any(_null_in_array(v, in_array=True) for v in value)
    return False


def _reject_constant(name: str) -> None:
    raise ValueError(name)  # NaN and Infinity are not JSON


def decode_json(payload: bytes) -> JsonValue:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ShadowRequestError(415, NOT_UTF8) from None
    try:
        value: JsonValue = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        raise ShadowRequestError(400, INVALID_JSON) from None
    return value


def client_token(doc: JsonObject) -> str | None:
    token = doc.get("clientToken")
    if token is None:
        return None
    if not isinstance(token, str) or len(token.encode()) > MAX_CLIENT_TOKEN_BYTES:
        raise ShadowRequestError(400, INVALID_CLIENT_TOKEN)
    return token


def client_token_of(payload: bytes) -> str | None:
    """The request's valid clientToken, or None: for answers that refuse a request without reading it."""
    try:
        doc = decode_json(payload) if payload else None
        return client_token(doc) if isinstance(doc, dict) else None
    except ShadowRequestError:
        return None


def parse_token_only(payload: bytes) -> str | None:
    """The clientToken of a get or delete request: the body is empty or a JSON object (anything else is ignored)."""
    if not payload.strip():
        return None
    doc = decode_json(payload)
    if not isinstance(doc, dict):
        raise ShadowRequestError(400, INVALID_JSON)
    return client_token(doc)


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    sections: dict[str, JsonObject | None]  # "desired"/"reported" present in the request; None deletes it
    echo: JsonValue  # the request's "state", answered back as it came
    client_token: str | None
    version: int | None


def _parse_sections(state: JsonValue, token: str | None) -> dict[str, JsonObject | None]:
    if state is None:
        return dict.fromkeys(SECTIONS)
    if not isinstance(state, dict):
        raise ShadowRequestError(400, STATE_NOT_OBJECT, token)
    if any(key not in SECTIONS for key in state):
        raise ShadowRequestError(400, INVALID_NODE, token)
    sections: dict[str, JsonObject | None] = {}
    for name, section in state.items():
        if section is not None and not isinstance(section, dict):
            raise ShadowRequestError(400, SECTION_NOT_OBJECT[name], token)
        if _depth(section) > MAX_DEPTH:
            raise ShadowRequestError(400, TOO_DEEP, token)
        if _null_in_array(section):
            raise ShadowRequestError(400, INVALID_JSON, token)
        sections[name] = section
    return sections


def parse_update(payload: bytes, *, max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> UpdateRequest:
    """Validate an update request the way the service does, in its order; raise ShadowRequestError."""
    doc = decode_json(payload)
    if not isinstance(doc, dict):
        raise ShadowRequestError(400, INVALID_JSON)
    token = client_token(doc)
    version = doc.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 0):
        raise ShadowRequestError(400, INVALID_VERSION, token)
    if "state" not in doc:
        raise ShadowRequestError(400, MISSING_STATE, token)
    state = doc["state"]
    sections = _parse_sections(state, token)
    if compact_size(state) > max_document_bytes:
        raise ShadowRequestError(413, TOO_LARGE, token)
    return UpdateRequest(sections, state, token, version)


def _with_token(doc: JsonObject, token: str | None) -> JsonObject:
    if token is not None:
        doc["clientToken"] = token
    return doc


@dataclass(slots=True)
class _Shadow:
    state: JsonObject  # "desired"/"reported", each only when non-empty
    metadata: JsonObject  # the same sections
    version: int

    def snapshot(self) -> JsonObject:
        return {"state": copy.deepcopy(self.state), "metadata": copy.deepcopy(self.metadata), "version": self.version}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request produced: its answer (accepted document or error) and the events to publish after it."""

    accepted: bool
    response: JsonObject
    events: tuple[tuple[str, JsonObject], ...] = ()  # (topic suffix after the prefix, payload)


def _section(doc: JsonObject, name: str) -> JsonObject:
    value = doc.get(name)
    return value if isinstance(value, dict) else {}


class ShadowStore:
    """Every shadow's document and the request semantics, without MQTT: deterministic given the timestamps.

    ``get``/``update``/``delete`` return the accepted Outcome or raise ShadowRequestError; ``handle``
    turns a refusal into a rejected Outcome.
    """

    def __init__(self, *, max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> None:
        self.max_document_bytes = max_document_bytes
        self._shadows: dict[ShadowKey, _Shadow] = {}
        self._deleted_versions: dict[ShadowKey, int] = {}

    def list_shadows(self) -> list[ShadowKey]:
        return list(self._shadows)

    def document(self, key: ShadowKey, timestamp: int) -> JsonObject | None:
        """The document get/accepted carries (without clientToken), or None when there is no such shadow."""
        shadow = self._shadows.get(key)
        if shadow is None:
            return None
        state = copy.deepcopy(shadow.state)
        delta = compute_delta(_section(shadow.state, "desired"), _section(shadow.state, "reported"))
        if delta:
            state["delta"] = delta
        return {
            "state": state,
            "metadata": copy.deepcopy(shadow.metadata),
            "version": shadow.version,
            "timestamp": timestamp,
        }

    def handle(self, operation: str, key: ShadowKey, payload: bytes, timestamp: int) -> Outcome:
        try:
            if operation == "get":
                return self.get(key, payload, timestamp)
            if operation == "update":
                return self.update(key, payload, timestamp)
            if operation == "delete":
                return self.delete(key, payload, timestamp)
        except ShadowRequestError as exc:
            return Outcome(accepted=False, response=exc.payload())
        msg = f"unknown shadow operation {operation!r}: expected one of {OPERATIONS}"
        raise ValueError(msg)

    def _not_found(self, key: ShadowKey, token: str | None) -> ShadowRequestError:
        return ShadowRequestError(404, f"No shadow exists with name: '{key.name or key.thing}'", token)

    def get(self, key: ShadowKey, payload: bytes, timestamp: int) -> Outcome:
        token = parse_token_only(payload)
        doc = self.document(key, timestamp)
        if doc is None:
            raise self._not_found(key, token)
        return Outcome(accepted=True, response=_with_token(doc, token))

    def delete(self, key: ShadowKey, payload: bytes, timestamp: int) -> Outcome:
        token = parse_token_only(payload)
        shadow = self._shadows.pop(key, None)
        if shadow is None:
            raise self._not_found(key, token)
        self._deleted_versions[key] = shadow.version
        return Outcome(accepted=True, response=_with_token({"version": shadow.version, "timestamp": timestamp}, token))

    def update(self, key: ShadowKey, payload: bytes, timestamp: int) -> Outcome:
        request = parse_update(payload, max_document_bytes=self.max_document_bytes)
        token = request.client_token
        current = self._shadows.get(key)
        version = current.version if current is not None else self._deleted_versions.get(key, 0)
        if request.version is not None and request.version != version:
            raise ShadowRequestError(409, VERSION_CONFLICT, token)
        base = current or _Shadow({}, {}, version)
        state: JsonObject = {}
        metadata: JsonObject = {}
        for name in SECTIONS:
            old, old_meta = _section(base.state, name), _section(base.metadata, name)
            if name in request.sections:
                patch = request.sections[name]
                if patch is None:
                    continue
                new, new_meta = merge_section(old, patch), merge_metadata(old, old_meta, patch, timestamp)
            else:
                new, new_meta = old, old_meta
            if new:
                state[name], metadata[name] = new, new_meta
        if compact_size(state) > self.max_document_bytes:
            raise ShadowRequestError(413, TOO_LARGE, token)
        new_shadow = _Shadow(state, metadata, version + 1)
        self._shadows[key] = new_shadow
        self._deleted_versions.pop(key, None)

        accepted: JsonObject = {
            "state": copy.deepcopy(request.echo),
            "metadata": metadata_of(request.echo, timestamp),
            "version": new_shadow.version,
            "timestamp": timestamp,
        }
        documents: JsonObject = {
            "previous": current.snapshot() if current is not None else None,
            "current": new_shadow.snapshot(),
            "timestamp": timestamp,
        }
        events: list[tuple[str, JsonObject]] = [("update/documents", _with_token(documents, token))]
        delta = compute_delta(_section(state, "desired"), _section(state, "reported"))
        touched = (path for patch in request.sections.values() for path in touched_paths(patch))
        if delta and any(path_in_delta(path, delta) for path in touched):
            event: JsonObject = {
                "version": new_shadow.version,
                "timestamp": timestamp,
                "state": delta,
                "metadata": delta_metadata(delta, _section(metadata, "desired")),
            }
            events.append(("update/delta", _with_token(event, token)))
        return Outcome(accepted=True, response=_with_token(accepted, token), events=tuple(events))
