"""AWS IoT Core's topic rules, shared by both transports (``mqtt`` and ``greengrass_ipc``).

Contract:
- ``check_iot_core_limits(topic, payload)`` raises ``PublishError(retryable=False)`` for what IoT Core
  would refuse, before anything is sent (awscrt and the nucleus do not check): a topic that is empty or
  has a wildcard, over 256 bytes or over 7 slashes (a ``$aws/rules/<rule>/`` prefix not counted), or a
  payload over 128 KiB. No retry can fix any of these.
- ``topic_matches(filter, topic)`` is MQTT filter matching as a broker does it; a leading wildcard does
  not match ``$`` topics (``$aws/…``).
Pure functions: no I/O, no awscrt.
"""

from __future__ import annotations

from edge_gateway.config.topics import MAX_PAYLOAD_BYTES, MAX_TOPIC_BYTES, MAX_TOPIC_SLASHES
from edge_gateway.errors import PublishError

__all__ = ["MAX_PAYLOAD_BYTES", "MAX_TOPIC_BYTES", "MAX_TOPIC_SLASHES", "check_iot_core_limits", "topic_matches"]


def check_iot_core_limits(topic: str, payload: bytes) -> None:
    """Raise PublishError(retryable=False) for a topic or payload AWS IoT Core would refuse."""
    topic_bytes = len(topic.encode())
    if not topic or "#" in topic or "+" in topic:
        raise PublishError(f"topic {topic!r} is empty or has a wildcard", retryable=False)
    if topic_bytes > MAX_TOPIC_BYTES:
        raise PublishError(
            f"topic {topic!r} is {topic_bytes} bytes, over IoT Core's {MAX_TOPIC_BYTES}", retryable=False
        )
    counted = topic
    if topic.startswith("$aws/rules/"):
        counted = topic.split("/", 3)[3] if topic.count("/") >= 3 else ""  # noqa: PLR2004 - $aws/rules/<rule>/
    if counted.count("/") > MAX_TOPIC_SLASHES:
        raise PublishError(
            f"topic {topic!r} has {counted.count('/')} slashes, over IoT Core's {MAX_TOPIC_SLASHES}", retryable=False
        )
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PublishError(
            f"payload of {len(payload)} bytes on {topic!r} is over IoT Core's {MAX_PAYLOAD_BYTES}", retryable=False
        )


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching; a leading wildcard does not match ``$`` topics (``$aws/…``), as on a broker."""
    if topic.startswith("$") and topic_filter[:1] in ("#", "+"):
        return False
    f_parts, t_parts = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts) or (part not in ("+", t_parts[i])):
            return False
    return len(f_parts) == len(t_parts)
