"""The Encoder contract between the publisher and the destination encodings, and one Encoder per destination.

An ``Encoder`` takes buffer records (in seq order) and the hash of the configuration that collected them
(None without provenance) and returns ``Encoded``:
- every record MUST come back exactly once: inside one of ``messages`` or in ``rejected`` with the reason the
  destination would refuse it (the publisher dead-letters those and never sends them);
- each message is at most the destination's ``max_message_bytes``;
- ``expires_ns``, when given, has one entry per message: past that wall-clock time the destination would
  refuse the message (SiteWise's time window), so it is dead-lettered rather than retried.
Encoders are pure apart from reading the clock (SiteWise); ``encoder_for(dest, thing)`` picks one by the
destination's type.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge_gateway.buffer.base import Record
from edge_gateway.config.model import DestinationBase, IotCoreDestination, SiteWiseDestination
from edge_gateway.publish.encode import sitewise
from edge_gateway.publish.encode.iotcore import Message, encode_batch


@dataclass(frozen=True, slots=True)
class Encoded:
    messages: list[Message]
    rejected: list[tuple[Record, str]] = field(default_factory=list)  # never to be sent, with the reason
    # Per message: past this wall-clock time the destination would refuse it (dead-lettered, not retried).
    expires_ns: list[int] | None = None


# (records, hash of the configuration that collected them or None) -> what to send
Encoder = Callable[[Sequence[Record], str | None], Encoded]


def iotcore_encoder(dest: IotCoreDestination, thing: str) -> Encoder:
    def encode(records: Sequence[Record], cfg: str | None) -> Encoded:
        return Encoded(
            encode_batch(records, thing=thing, topic_template=dest.topic, max_bytes=dest.max_message_bytes, cfg=cfg)
        )

    return encode


def sitewise_encoder(dest: SiteWiseDestination, thing: str) -> Encoder:
    """The body is AWS's BatchPutAssetPropertyValue shape and nothing else: provenance for SiteWise is the
    property alias (``/{thing}/{source}/{point}``) plus the audit trail's declarations."""

    def encode(records: Sequence[Record], _cfg: str | None) -> Encoded:
        batch = sitewise.encode_batch(
            records,
            thing=thing,
            now_ns=time.time_ns(),
            topic_template=dest.topic,
            alias_template=dest.alias,
            max_bytes=dest.max_message_bytes,
        )
        return Encoded(batch.messages, batch.rejected, batch.expires_ns)

    return encode


def encoder_for(dest: DestinationBase, thing: str) -> Encoder:
    if isinstance(dest, SiteWiseDestination):
        return sitewise_encoder(dest, thing)
    assert isinstance(dest, IotCoreDestination)
    return iotcore_encoder(dest, thing)
