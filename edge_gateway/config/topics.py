"""Templates and topics of the configuration document, checked before anything runs.

Contract:
- ``check_template(template, allowed)``: a template holds only the documented placeholders, written as
  ``{name}``: no format spec (``{thing:>200000000}``), no conversion (``{thing!r}``), no positional or
  empty field (``{0}``, ``{}``), no attribute or index (``{thing.x}``, ``{thing[0]}``), no nested braces.
  Such a template is formatted with ``str.format(**names)`` only, so its output is as long as its literal
  text plus the names, never more.
- ``topic_problem(topic)``: why AWS IoT Core would refuse a *formatted* publish topic, or ``None``. The
  figures (``MAX_TOPIC_BYTES``, ``MAX_TOPIC_SLASHES``, ``MAX_PAYLOAD_BYTES``) live here, on the config
  floor, so the document can be checked with them; ``publish/transport/topics.py`` checks every publish
  against the same figures.
- ``topic_errors(...)``: every destination topic formatted with the real thing name, every source name and
  (SiteWise) every value type must pass ``topic_problem`` and may not fall on the status topic, the audit
  topic or a reserved ``$`` topic other than Basic Ingest (``$aws/rules/<rule>/…``). One error per
  template, naming the first name that breaks it.
Pure functions: no I/O.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# AWS IoT Core quotas, "Message broker and protocol limits and quotas"
# (https://docs.aws.amazon.com/general/latest/gr/iot-core.html): topic size 256 bytes of UTF-8; at most
# 7 forward slashes in a topic, the Basic Ingest prefix "$aws/rules/<rule>/" not counted (awscrt's
# AwsIotCoreDefaults validation counts the same way); a PUBLISH payload of at most 128 KB.
MAX_TOPIC_BYTES = 256
MAX_TOPIC_SLASHES = 7
MAX_PAYLOAD_BYTES = 128 * 1024

BASIC_INGEST = "$aws/rules/"
# An IoT rule name: letters, digits and underscores (CreateTopicRule's ruleName, at most 128).
_RULE = re.compile(r"\$aws/rules/[A-Za-z0-9_]{1,128}(/|$)")
# MQTT 5 (1.5.4): no U+0000 in a UTF-8 string, and control characters should not appear in one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
SITEWISE_TYPES = ("double", "integer", "boolean", "string")


def check_template(template: str, allowed: Iterable[str]) -> str:
    """``template`` if it holds only ``{name}`` placeholders from ``allowed``; else ``ValueError`` saying why."""
    allowed = set(allowed)
    names = ", ".join("{" + a + "}" for a in sorted(allowed))
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:  # "{thing", "}" alone
        msg = f"not a valid template ({exc}); write placeholders as {names} and a literal brace as {{{{ or }}}}"
        raise ValueError(msg) from None
    unknown = sorted({name for name, _, _ in fields if name not in allowed and name.isidentifier()})
    if unknown:
        msg = f"unknown placeholder(s) {unknown}; allowed: {names}"
        raise ValueError(msg)
    for name, spec, conv in fields:
        if not name.isidentifier():  # "", "0", "thing.attr", "thing[0]"
            msg = f"placeholder {{{name}}} is not one of {names}: no positional, attribute or index fields"
            raise ValueError(msg)
        if spec or conv:
            written = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            msg = f"placeholder {written} has a format spec or conversion; write it as {{{name}}} (allowed: {names})"
            raise ValueError(msg)
    return template


def check_publish_template(template: str, allowed: Iterable[str]) -> str:
    """``check_template`` plus what no formatting can fix: MQTT wildcards and control characters."""
    check_template(template, allowed)
    if "#" in template or "+" in template:
        msg = "a publish topic cannot contain MQTT wildcards '#' or '+'"
        raise ValueError(msg)
    if _CONTROL.search(template):
        msg = "a topic cannot contain control characters (U+0000..U+001F, U+007F..U+009F)"
        raise ValueError(msg)
    return template


def counted_slashes(topic: str) -> int:
    """Slashes IoT Core counts against ``MAX_TOPIC_SLASHES``: a ``$aws/rules/<rule>/`` prefix is not counted."""
    if topic.startswith(BASIC_INGEST):
        return topic.split("/", 3)[3].count("/") if topic.count("/") >= 3 else 0  # noqa: PLR2004 - $aws/rules/<rule>/
    return topic.count("/")


def topic_problem(topic: str) -> str | None:
    """Why IoT Core would refuse ``topic`` as a publish topic, or None."""
    size, slashes = len(topic.encode()), counted_slashes(topic)
    problems = [
        (not topic, "the topic is empty"),
        ("#" in topic or "+" in topic, f"topic {topic!r} has an MQTT wildcard ('#' or '+')"),
        (bool(_CONTROL.search(topic)), f"topic {_short(topic)} has a control character"),
        (size > MAX_TOPIC_BYTES, f"topic {_short(topic)} is {size} bytes, over IoT Core's {MAX_TOPIC_BYTES}"),
        (
            slashes > MAX_TOPIC_SLASHES,
            (
                f"topic {_short(topic)} has {slashes} slashes, over IoT Core's {MAX_TOPIC_SLASHES}"
                f" (a {BASIC_INGEST}<rule>/ prefix is not counted)"
            ),
        ),
        (
            topic.startswith("$") and not _RULE.match(topic),
            (
                f"topic {_short(topic)} is reserved: '$' topics belong to AWS (shadows, jobs, events);"
                f" only Basic Ingest '{BASIC_INGEST}<rule name>/…' may be published to"
            ),
        ),
    ]
    return next((message for broken, message in problems if broken), None)


def _short(topic: str) -> str:
    return repr(topic if len(topic) <= 80 else topic[:60] + "…")  # noqa: PLR2004 - enough to recognise it


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    """A destination's topic template and where it sits in the document (``publisher.destinations.0.iotcore``)."""

    path: str
    template: str
    types: Sequence[str] = ()  # SiteWise: every {type}


def topic_errors(
    thing: str, sources: Sequence[str], destinations: Sequence[TopicTemplate], reserved: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """``(path, message)`` for every destination topic IoT Core would refuse or that falls on a ``reserved``
    topic (``(section, formatted topic)``: the heartbeat's and the audit trail's), and for those topics."""
    errors: list[tuple[str, str]] = []
    taken: dict[str, str] = {}
    for section, topic in reserved:
        if (problem := topic_problem(topic)) is not None:
            errors.append((f"{section}.topic", f"with thing {thing!r}, {problem}: change the template"))
        elif topic in taken:
            errors.append((f"{section}.topic", f"{topic!r} is also the {taken[topic]} topic: give each its own"))
        taken.setdefault(topic, section)
    for dest in destinations:
        for source in sources:
            problem = _first_problem(dest, thing, source, taken)
            if problem is not None:
                errors.append((f"{dest.path}.topic", problem))
                break
    return errors


def _first_problem(dest: TopicTemplate, thing: str, source: str, taken: dict[str, str]) -> str | None:
    for vtype in dest.types or ("",):
        topic = dest.template.format(thing=thing, source=source, type=vtype)
        with_names = f"with thing {thing!r} and source {source!r}" + (f" and type {vtype!r}" if vtype else "")
        if (problem := topic_problem(topic)) is not None:
            return f"{with_names}, {problem}: change the template or shorten the names"
        if topic in taken:
            return (
                f"{with_names}, the topic is {topic!r}, the {taken[topic]} topic: readings may not be published"
                " into it; choose another topic"
            )
    return None
