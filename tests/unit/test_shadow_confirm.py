"""The confirm window's judgement of destinations (control/confirm.py ``deliveries``): a PUBACK since the
change confirms, a refusal for good fails at once, and at the end of the window a destination with
nothing acknowledged is confirmed only if it had nothing to send."""

from __future__ import annotations

from pathlib import Path

from edge_gateway.buffer.memory import MemoryBuffer
from edge_gateway.config.model import parse_config
from edge_gateway.control.confirm import deliveries, snapshot
from edge_gateway.publish.deadletter import DeadLetterFile
from edge_gateway.publish.encode.encoder import encoder_for
from edge_gateway.publish.publisher import Publisher
from tests.unit.test_audit_recorder import document


class _Broker:
    """A transport that acknowledges every publish (the publishers here are judged, never run)."""

    async def publish(self, _topic: str, _payload: bytes) -> int:
        return 0


def publisher(tmp_path: Path, name: str = "cloud") -> Publisher:
    dest = parse_config(document(tmp_path)).publisher.destinations[0].model_copy(update={"name": name})
    return Publisher(
        dest,
        MemoryBuffer([name]),
        _Broker(),
        encoder=encoder_for(dest, "line1"),
        dead_letter=DeadLetterFile(tmp_path / "dead"),
    )


def test_a_puback_since_the_change_confirms_a_destination(tmp_path: Path) -> None:
    p = publisher(tmp_path)
    assert deliveries([p], {"cloud"}, {}, 4.0, final=False) == (None, {"cloud"})
    p.status.messages = 1
    assert deliveries([p], {"cloud"}, {}, 4.0, final=False) == (None, set())


def test_acknowledgements_before_the_change_do_not_count_for_the_same_publisher(tmp_path: Path) -> None:
    p = publisher(tmp_path)
    p.status.messages, p.status.failures = 5, 2
    before = snapshot([p])
    assert deliveries([p], {"cloud"}, before, 4.0, final=False) == (None, {"cloud"})
    replaced = publisher(tmp_path)  # apply replaced it: it starts from zero
    replaced.status.messages = 5
    assert deliveries([replaced], {"cloud"}, before, 4.0, final=False) == (None, set())
    # At the end of the window: the earlier failures are not this change's.
    assert deliveries([p], {"cloud"}, before, 4.0, final=True) == (None, set())


def test_a_refusal_for_good_fails_at_once_even_with_acknowledgements(tmp_path: Path) -> None:
    p = publisher(tmp_path, "blocked")
    p.status.messages, p.status.rejected_points = 3, 1
    p.status.last_error = "broker refused publish to 'refused/line1/press': NOT_AUTHORIZED (135)"
    why, left = deliveries([p], {"blocked"}, {}, 4.0, final=False)
    assert why == (
        "destination blocked: the broker refused its messages for good "
        "(last error: broker refused publish to 'refused/line1/press': NOT_AUTHORIZED (135))"
    )
    assert left == set()


def test_at_the_end_of_the_window_nothing_acknowledged_is_confirmed_only_if_nothing_was_to_send(
    tmp_path: Path,
) -> None:
    quiet = publisher(tmp_path, "quiet")
    assert deliveries([quiet], {"quiet"}, {}, 4.0, final=True) == (None, set())
    failing = publisher(tmp_path, "failing")
    failing.status.failures, failing.status.last_error = 2, "publish to 'x' failed: TIMEOUT"
    why, _ = deliveries([failing], {"failing"}, {}, 4.0, final=True)
    assert why is not None
    assert why.startswith("destination failing: no message acknowledged within 4 s after the change (2 failure(s)")
    waiting = publisher(tmp_path, "waiting")
    waiting.status.in_flight = 1
    why, _ = deliveries([waiting], {"waiting"}, {}, 4.0, final=True)
    assert why is not None
    assert "1 in flight" in why
    assert deliveries([quiet], {"gone"}, {}, 4.0, final=True) == (None, set())  # removed since: nothing to judge
