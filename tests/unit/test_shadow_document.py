"""The shadow stand-in's document logic, without MQTT: merge, delta, metadata, validation, versions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.shadow.document import (
    MAX_DEPTH,
    TOO_DEEP,
    JsonObject,
    JsonValue,
    ShadowKey,
    ShadowStore,
    compute_delta,
    json_equal,
    merge_metadata,
    merge_section,
    parse_topic,
)

KEY = ShadowKey("thing-1", "config")


def document(store: ShadowStore, key: ShadowKey = KEY) -> Any:
    return store.document(key, 0)


def update(store: ShadowStore, request: dict[str, Any], timestamp: int = 100, key: ShadowKey = KEY) -> Any:
    return store.handle("update", key, json.dumps(request).encode(), timestamp)


# ---- merge ------------------------------------------------------------------------------------------


def test_objects_merge_nulls_delete_arrays_replace_and_inputs_stay_as_they_were() -> None:
    current: JsonObject = {"a": 1, "b": {"c": 2, "d": 3}, "list": [1, 2, 3], "gone": True}
    patch: JsonObject = {"b": {"c": 20, "e": 5}, "list": [9], "gone": None, "new": "x"}
    assert merge_section(current, patch) == {"a": 1, "b": {"c": 20, "d": 3, "e": 5}, "list": [9], "new": "x"}
    assert current == {"a": 1, "b": {"c": 2, "d": 3}, "list": [1, 2, 3], "gone": True}


def test_an_object_emptied_by_nulls_disappears() -> None:
    assert merge_section({"a": {"b": 1}, "c": 2}, {"a": {"b": None}}) == {"c": 2}
    assert merge_section({}, {"a": {"b": None, "c": {}}}) == {}


def test_a_value_replaces_an_object_and_an_object_replaces_a_value() -> None:
    assert merge_section({"a": {"b": 1}}, {"a": [1]}) == {"a": [1]}
    assert merge_section({"a": 5}, {"a": {"b": 1, "c": None}}) == {"a": {"b": 1}}


# ---- delta ------------------------------------------------------------------------------------------


def test_delta_of_the_aws_documentation_examples() -> None:
    # "Delta state" in the AWS developer guide: flat, then nested with the path kept to the root.
    assert compute_delta({"color": "RED", "state": "STOP"}, {"color": "GREEN", "engine": "ON"}) == {
        "color": "RED",
        "state": "STOP",
    }
    desired: JsonObject = {"lights": {"color": {"r": 255, "g": 255, "b": 255}}}
    reported: JsonObject = {"lights": {"color": {"r": 255, "g": 0, "b": 255}}}
    assert compute_delta(desired, reported) == {"lights": {"color": {"g": 255}}}


def test_arrays_compare_as_whole_values() -> None:
    assert compute_delta({"seq": [1, 2, 3]}, {"seq": [1, 2]}) == {"seq": [1, 2, 3]}
    assert compute_delta({"seq": [{"a": 1}]}, {"seq": [{"a": 1}]}) == {}


def test_json_types_are_compared_as_json_not_as_python() -> None:
    assert compute_delta({"on": True, "n": 1}, {"on": 1, "n": 1.0}) == {"on": True}
    assert not json_equal(a=False, b=0)
    assert not json_equal(a=None, b=False)
    assert json_equal({"a": [1, 2.5]}, {"a": [1.0, 2.5]})


# ---- metadata ---------------------------------------------------------------------------------------


def test_metadata_stamps_what_an_update_set_and_keeps_the_rest() -> None:
    state: JsonObject = {"a": 1, "b": {"c": 2, "d": 3}, "arr": [1, 2]}
    meta: JsonObject = {
        "a": {"timestamp": 1},
        "b": {"c": {"timestamp": 1}, "d": {"timestamp": 1}},
        "arr": [{"timestamp": 1}, {"timestamp": 1}],
    }
    patch: JsonObject = {"b": {"c": 5}, "arr": [{"x": 1}], "a": None}
    assert merge_metadata(state, meta, patch, 9) == {
        "b": {"c": {"timestamp": 9}, "d": {"timestamp": 1}},
        "arr": [{"x": {"timestamp": 9}}],
    }


# ---- topics -----------------------------------------------------------------------------------------


def test_request_topics_are_recognised_and_answers_are_not() -> None:
    assert parse_topic("$aws/things/t/shadow/name/cfg/update") == (ShadowKey("t", "cfg"), "update")
    assert parse_topic("$aws/things/t/shadow/get") == (ShadowKey("t"), "get")
    assert parse_topic("$aws/things/t/shadow/name/cfg/update/accepted") is None
    assert parse_topic("$aws/things/t/shadow/update/delta") is None
    assert parse_topic("$aws/things/t/shadow/name/cfg/list") is None
    assert ShadowKey("t", "cfg").topic_prefix == "$aws/things/t/shadow/name/cfg"
    assert ShadowKey("t").topic_prefix == "$aws/things/t/shadow"


# ---- the store: responses as AWS sends them ---------------------------------------------------------------


def test_first_update_creates_version_1_and_answers_with_what_it_set() -> None:
    store = ShadowStore()
    out = update(store, {"state": {"desired": {"color": "red", "lamp": {"on": True}}}, "clientToken": "t1"}, 100)
    assert out.accepted
    assert out.response == {
        "state": {"desired": {"color": "red", "lamp": {"on": True}}},
        "metadata": {"desired": {"color": {"timestamp": 100}, "lamp": {"on": {"timestamp": 100}}}},
        "version": 1,
        "timestamp": 100,
        "clientToken": "t1",
    }
    current = {
        "state": {"desired": {"color": "red", "lamp": {"on": True}}},
        "metadata": {"desired": {"color": {"timestamp": 100}, "lamp": {"on": {"timestamp": 100}}}},
        "version": 1,
    }
    delta = {
        "version": 1,
        "timestamp": 100,
        "state": {"color": "red", "lamp": {"on": True}},
        "metadata": {"color": {"timestamp": 100}, "lamp": {"on": {"timestamp": 100}}},
        "clientToken": "t1",
    }
    assert out.events == (
        ("update/documents", {"previous": None, "current": current, "timestamp": 100, "clientToken": "t1"}),
        ("update/delta", delta),
    )


def test_delta_metadata_is_the_desired_metadata_not_the_time_of_the_update() -> None:
    store = ShadowStore()
    update(store, {"state": {"desired": {"a": 1, "b": 2}, "reported": {"a": 1, "b": 2}}}, 100)
    out = update(store, {"state": {"reported": {"b": 3}}}, 200)
    # The real service publishes a delta when a reported value moves away from desired.
    assert dict(out.events)["update/delta"] == {
        "version": 2,
        "timestamp": 200,
        "state": {"b": 2},
        "metadata": {"b": {"timestamp": 100}},
    }


def test_delta_is_published_only_when_the_update_touches_it() -> None:
    store = ShadowStore()
    update(store, {"state": {"desired": {"a": 1, "b": 2}}})
    unrelated = update(store, {"state": {"reported": {"other": 1}}})
    assert [suffix for suffix, _ in unrelated.events] == ["update/documents"]
    partly_synced = update(store, {"state": {"reported": {"a": 1}}})
    assert [suffix for suffix, _ in partly_synced.events] == ["update/documents"]
    again = update(store, {"state": {"desired": {"b": 2}}})  # desired re-sent: its delta is announced again
    assert dict(again.events)["update/delta"]["state"] == {"b": 2}
    synced = update(store, {"state": {"reported": {"b": 2}}})
    assert [suffix for suffix, _ in synced.events] == ["update/documents"]
    assert "delta" not in document(store)["state"]


def test_deleting_a_reported_key_that_desired_still_has_announces_it() -> None:
    store = ShadowStore()
    update(store, {"state": {"desired": {"a": 1}, "reported": {"a": 1}}})
    out = update(store, {"state": {"reported": {"a": None}}})
    assert dict(out.events)["update/delta"]["state"] == {"a": 1}


def test_nulls_are_echoed_in_the_answer_and_removed_from_the_document() -> None:
    store = ShadowStore()
    update(store, {"state": {"desired": {"a": 1, "b": 2}, "reported": {"x": 1}}}, 100)
    out = update(store, {"state": {"desired": {"a": None}}}, 200)
    assert out.response["state"] == {"desired": {"a": None}}
    assert out.response["metadata"] == {"desired": {"a": {"timestamp": 200}}}
    cleared = update(store, {"state": {"desired": None}}, 300)
    assert cleared.response["state"] == {"desired": None}
    assert cleared.response["metadata"] == {"desired": {"timestamp": 300}}
    assert store.document(KEY, 400) == {
        "state": {"reported": {"x": 1}},
        "metadata": {"reported": {"x": {"timestamp": 100}}},
        "version": 3,
        "timestamp": 400,
    }


def test_state_null_clears_the_shadow_but_keeps_it() -> None:
    store = ShadowStore()
    update(store, {"state": {"desired": {"a": 1}, "reported": {"a": 2}}})
    update(store, {"state": None})
    assert store.document(KEY, 5) == {"state": {}, "metadata": {}, "version": 2, "timestamp": 5}


def test_get_carries_the_delta_and_the_client_token() -> None:
    store = ShadowStore()
    update(store, {"state": {"desired": {"a": 1, "b": [1]}, "reported": {"a": 1, "b": [2]}}}, 100)
    out = store.handle("get", KEY, b'{"clientToken":"g"}', 150)
    assert out.response == {
        "state": {"desired": {"a": 1, "b": [1]}, "reported": {"a": 1, "b": [2]}, "delta": {"b": [1]}},
        "metadata": {
            "desired": {"a": {"timestamp": 100}, "b": [{"timestamp": 100}]},
            "reported": {"a": {"timestamp": 100}, "b": [{"timestamp": 100}]},
        },
        "version": 1,
        "timestamp": 150,
        "clientToken": "g",
    }


def test_missing_shadows_are_404_with_the_shadow_or_thing_name() -> None:
    store = ShadowStore()
    assert store.handle("get", KEY, b"", 1).response == {"code": 404, "message": "No shadow exists with name: 'config'"}
    classic = store.handle("delete", ShadowKey("thing-1"), b'{"clientToken":"d"}', 1)
    assert not classic.accepted
    assert classic.response == {"code": 404, "message": "No shadow exists with name: 'thing-1'", "clientToken": "d"}


def test_delete_keeps_the_version_and_a_new_shadow_continues_from_it() -> None:
    store = ShadowStore()
    update(store, {"state": {"reported": {"a": 1}}})
    update(store, {"state": {"reported": {"a": 2}}})
    out = store.handle("delete", KEY, b"", 7)
    assert out.response == {"version": 2, "timestamp": 7}
    assert not store.handle("get", KEY, b"", 8).accepted
    assert update(store, {"state": {"reported": {"a": 3}}, "version": 1}).response["code"] == 409
    again = update(store, {"state": {"reported": {"a": 3}}, "version": 2})
    assert again.response["version"] == 3
    assert dict(again.events)["update/documents"]["previous"] is None


def test_named_shadows_of_one_thing_and_classic_shadows_are_separate() -> None:
    store = ShadowStore()
    update(store, {"state": {"desired": {"a": 1}}}, key=ShadowKey("t", "one"))
    update(store, {"state": {"desired": {"a": 2}}}, key=ShadowKey("t", "two"))
    update(store, {"state": {"desired": {"a": 3}}}, key=ShadowKey("t"))
    assert [document(store, k)["state"]["desired"] for k in store.list_shadows()] == [{"a": 1}, {"a": 2}, {"a": 3}]


# ---- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        (b'{"state": {', 400, "Invalid JSON"),
        (b"[1]", 400, "Invalid JSON"),
        (b'{"state": {"desired": {"a": NaN}}}', 400, "Invalid JSON"),
        (b'{"state": {"desired": {"a": [1, null]}}}', 400, "Invalid JSON"),
        (b"{}", 400, "Missing required node: state"),
        (b'{"state": 5}', 400, "State node must be an object"),
        (b'{"state": {"desired": [1]}}', 400, "Desired node must be an object"),
        (b'{"state": {"reported": "x"}}', 400, "Reported node must be an object"),
        (b'{"state": {"delta": {"a": 1}}}', 400, "State contains an invalid node"),
        (b'{"state": {}, "version": "3"}', 400, "Invalid version"),
        (b'{"state": {}, "version": true}', 400, "Invalid version"),
        (
            b'{"state": {"desired": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}}',
            400,
            "JSON contains too many levels of nesting; maximum is 6",
        ),
        (b'{"state": {}, "version": 7}', 409, "Version conflict"),
        (b'{"state": {"desired": {"a": "\xff"}}}', 415, "Unsupported documented encoding; supported encoding is UTF-8"),
    ],
)
def test_refusals_carry_the_aws_code_and_message(payload: bytes, code: int, message: str) -> None:
    out = ShadowStore().handle("update", KEY, payload, 1)
    assert not out.accepted
    assert out.response == {"code": code, "message": message}
    assert out.events == ()


def test_refusals_echo_a_valid_client_token_and_not_an_invalid_one() -> None:
    store = ShadowStore()
    out = update(store, {"clientToken": "abc"})
    assert out.response == {"code": 400, "message": "Missing required node: state", "clientToken": "abc"}
    out = update(store, {"state": {}, "clientToken": "x" * 65})
    assert out.response == {"code": 400, "message": "Invalid clientToken"}
    assert update(store, {"state": {}, "clientToken": "x" * 64}).accepted


def test_six_levels_are_allowed() -> None:
    assert update(ShadowStore(), {"state": {"desired": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}}).accepted
    assert update(ShadowStore(), {"state": {"desired": {"a": {"b": {"c": {"d": {"e": [1]}}}}}}}).accepted


def test_size_limit_counts_desired_and_reported_of_the_result_not_metadata() -> None:
    store = ShadowStore(max_document_bytes=100)
    # {"desired":{"a":""}} is 20 bytes.
    assert update(store, {"state": {"desired": {"a": "x" * 80}}}).accepted
    over = update(store, {"state": {"desired": {"a": "x" * 81}}, "clientToken": "big"})
    assert over.response == {
        "code": 413,
        "message": "The payload exceeds the maximum size allowed",
        "clientToken": "big",
    }
    # Each request is small; the merged document would not be.
    refused = update(store, {"state": {"reported": {"b": "y" * 20}}})
    assert refused.response["code"] == 413
    assert document(store)["version"] == 1


# ---- properties -------------------------------------------------------------------------------------------

_KEYS = st.sampled_from(["a", "b", "c"])
_SCALARS = st.booleans() | st.integers(-3, 3) | st.sampled_from([0.5, 1.0]) | st.text("xy", max_size=2)
_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3), max_leaves=8
)
_PATCH_VALUES = st.recursive(
    _SCALARS | st.none() | st.lists(_VALUES, max_size=3),
    lambda inner: st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=8,
)
_PATCHES = st.dictionaries(_KEYS, _PATCH_VALUES, max_size=3)


def _state(patch: JsonObject) -> JsonObject:
    return merge_section({}, patch)  # a stored state: no nulls, no empty objects


def _leaf_paths(value: JsonValue, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], JsonValue]]:
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in _leaf_paths(v, (*prefix, k))]
    return [(prefix, value)]


def _at(value: JsonValue, path: tuple[str, ...]) -> JsonValue:
    for key in path:
        assert isinstance(value, dict)
        value = value[key]
    return value


@settings(max_examples=100, deadline=None)
@given(_PATCHES, _PATCHES)
def test_reporting_the_delta_clears_it(desired_patch: JsonObject, reported_patch: JsonObject) -> None:
    desired, reported = _state(desired_patch), _state(reported_patch)
    delta = compute_delta(desired, reported)
    assert compute_delta(desired, merge_section(reported, delta)) == {}
    # Every delta leaf is a desired value at the same path, and differs from reported there.
    for path, value in _leaf_paths(delta) if delta else []:
        assert json_equal(_at(desired, path), value)
    assert (delta == {}) == all(
        json_equal(value, _at(reported, path)) if _has(reported, path) else False
        for path, value in _leaf_paths(desired)
        if desired
    )


def _has(value: JsonValue, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return False
        value = value[key]
    return True


def _depth(value: JsonValue) -> int:
    if isinstance(value, dict | list):
        children = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(v) for v in children), default=0)
    return 0


def _shape(value: JsonValue) -> JsonValue:
    """Structure of a state with leaves erased, for comparison with its metadata."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return "leaf"


def _meta_shape(meta: JsonValue) -> JsonValue:
    if isinstance(meta, dict) and set(meta) == {"timestamp"} and isinstance(meta["timestamp"], int):
        return "leaf"
    if isinstance(meta, dict):
        return {k: _meta_shape(v) for k, v in meta.items()}
    if isinstance(meta, list):
        return [_meta_shape(v) for v in meta]
    return meta


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["desired", "reported"]), _PATCHES | st.none()), max_size=6))
def test_store_matches_a_fold_of_merges_and_metadata_mirrors_state(updates: list[tuple[str, Any]]) -> None:
    store = ShadowStore(max_document_bytes=1 << 20)
    model: dict[str, JsonObject] = {"desired": {}, "reported": {}}
    version = 0
    for i, (section, patch) in enumerate(updates, start=1):
        out = update(store, {"state": {section: patch}}, timestamp=i)
        if _depth(patch) > MAX_DEPTH:
            assert out.response == {"code": 400, "message": TOO_DEEP}
            continue
        version += 1
        assert out.response["version"] == version
        model[section] = {} if patch is None else merge_section(model[section], patch)
        doc = store.document(KEY, 0)
        assert doc is not None
        expected: JsonObject = {name: value for name, value in model.items() if value}
        delta = compute_delta(model["desired"], model["reported"])
        assert doc["state"] == expected | ({"delta": delta} if delta else {})
        assert _meta_shape(doc["metadata"]) == _shape(expected)
