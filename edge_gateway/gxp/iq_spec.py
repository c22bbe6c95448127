"""IQ data and the SPEC: what one installation fact is, what a SPEC says about it, and the comparison.

``IqItem`` is one measured fact (collected by ``iq`` / ``iq_collect``); ``ItemResult`` and ``Report`` are
what ``compare`` makes of the facts against a SPEC (rendered by ``iq_report``).

``init_spec(items)`` is a SPEC a person reviews and signs: every item with kind ``equals`` and its
current value. ``compare(spec, items)`` checks every item against its SPEC entry, of one of three kinds:

    items:
      package.asyncua: {equals: "2.1.0"}          # exact value (strings, numbers, booleans, null)
      python.version: {version: ">=3.11,<3.12"}    # a PEP 440 range (packaging.specifiers)
      os.release: {present: true}                  # recorded; any value but null passes

An item in the SPEC but not found fails ("missing"); an item found but not in the SPEC fails ("not in
the specification": nothing unspecified may be installed; use ``present`` to accept any value). An item
with a ``problem`` (found at collection) fails whatever the SPEC says. A malformed SPEC raises
``SpecError`` naming the item, before anything is compared. This module measures nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from edge_gateway.errors import GatewayError

SPEC_VERSION = 1
Value = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class IqItem:
    key: str
    value: Value
    info: dict[str, Any] = field(default_factory=dict)  # recorded and shown, not compared
    problem: str | None = None  # found at collection (expired certificate, unreadable file): always a failure


@dataclass(frozen=True, slots=True)
class ItemResult:
    key: str
    expected: str  # as the SPEC says it, for people: "== 2.1.0", "version >=3.11", "present", "(not specified)"
    actual: Value
    passed: bool
    reason: str
    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Report:
    time: str  # UTC ISO 8601
    thing_name: str | None
    spec_sha256: str | None
    spec_title: str
    results: tuple[ItemResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def deviations(self) -> list[ItemResult]:
        return [r for r in self.results if not r.passed]


class SpecError(GatewayError, ValueError):
    """The SPEC document is malformed; the message names the item. The operator must fix the spec."""

    retryable = False


def init_spec(items: Sequence[IqItem], *, title: str = "") -> dict[str, Any]:
    """A SPEC holding every item's current value (kind ``equals``), for a person to review and sign."""
    return {
        "spec_version": SPEC_VERSION,
        "title": title or "edge-gateway installation specification",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "reviewed_by": "",
        "approved_by": "",
        "items": {item.key: {"equals": item.value} for item in items},
    }


def _expected_text(rule: Mapping[str, Any]) -> str:
    if "equals" in rule:
        value = rule["equals"]
        return f"== {value}" if isinstance(value, str) else f"== {json.dumps(value)}"
    if "version" in rule:
        return f"version {rule['version']}"
    return "present"


def _check_rule(key: str, rule: Any) -> None:  # noqa: ANN401 - from YAML
    kinds = {"equals", "version", "present"}
    if not isinstance(rule, dict) or len(rule) != 1 or next(iter(rule)) not in kinds:
        msg = f"spec item {key!r}: must be one of {{equals: VALUE}}, {{version: RANGE}}, {{present: true}}"
        raise SpecError(msg)
    if "present" in rule and rule["present"] is not True:
        msg = f"spec item {key!r}: present must be true"
        raise SpecError(msg)
    if "version" in rule:
        try:
            SpecifierSet(str(rule["version"]))
        except InvalidSpecifier as exc:
            msg = f"spec item {key!r}: {rule['version']!r} is not a version range ({exc})"
            raise SpecError(msg) from exc


def _evaluate(rule: Mapping[str, Any], actual: Value) -> tuple[bool, str]:
    if "present" in rule:
        return (actual is not None, "present" if actual is not None else "not present")
    if "version" in rule:
        spec = SpecifierSet(str(rule["version"]))
        try:
            ok = actual is not None and Version(str(actual)) in spec
        except InvalidVersion:
            return False, f"{actual!r} is not a version"
        return ok, "in range" if ok else f"{actual} is not in {spec}"
    expected = rule["equals"]
    # YAML may read 7.0 as 7: compare numbers as numbers, everything else exactly (True is not 1).
    same = expected == actual and type(expected) is type(actual)
    if not same and isinstance(expected, int | float) and isinstance(actual, int | float):
        same = not isinstance(expected, bool) and not isinstance(actual, bool) and float(expected) == float(actual)
    return same, "matches" if same else f"expected {expected!r}, found {actual!r}"


def compare(spec: Mapping[str, Any], items: Sequence[IqItem], *, spec_sha256: str | None = None) -> Report:
    """Every item against the SPEC; ``SpecError`` if the SPEC itself is malformed."""
    if spec.get("spec_version") != SPEC_VERSION:
        msg = f"spec_version must be {SPEC_VERSION}, got {spec.get('spec_version')!r}"
        raise SpecError(msg)
    rules = spec.get("items")
    if not isinstance(rules, dict):
        msg = "the spec needs an 'items' mapping"
        raise SpecError(msg)
    for key, rule in rules.items():
        _check_rule(str(key), rule)
    found = {item.key: item for item in items}
    results: list[ItemResult] = []
    for key in sorted(set(found) | {str(k) for k in rules}):
        item = found.get(key)
        rule = rules.get(key)
        if item is None:
            results.append(
                ItemResult(key, _expected_text(rule or {}), None, passed=False, reason="missing: not found", info={})
            )
            continue
        if rule is None:
            results.append(
                ItemResult(
                    key, "(not specified)", item.value, passed=False, reason="not in the specification", info=item.info
                )
            )
            continue
        passed, reason = _evaluate(rule, item.value)
        if item.problem is not None:
            reason = item.problem if passed else f"{reason}; {item.problem}"
            passed = False
        results.append(ItemResult(key, _expected_text(rule), item.value, passed, reason, item.info))
    thing = found.get("gateway.thing_name")
    return Report(
        time=datetime.now(UTC).isoformat(timespec="seconds"),
        thing_name=None if thing is None or thing.value is None else str(thing.value),
        spec_sha256=spec_sha256,
        spec_title=str(spec.get("title", "")),
        results=tuple(results),
    )
