"""The subscription of one OPC UA session: created with its monitored items, or taken over from the last one.

Contract (the reader decides which; both leave the session's subscription and watchdog fields set):
- ``create_subscription``: one subscription with ``publishing_interval_ms``, a keep-alive count that
  covers ``keepalive_s``, a lifetime of 10 keep-alives and no limit of notifications per publish; then
  one monitored item per wanted node (data change, the item's sampling interval and queue size, oldest
  discarded, absolute/percent deadband), created in chunks within the server's ``monitored`` limit. The
  aliases that got an item are appended to ``session.subscribed`` in the order given; each refused one
  goes into ``refused`` with the server's StatusCode. The keep-alive watchdog uses the revised values.
- ``take_over``: TransferSubscriptions of the previous session's subscription with its initial values
  resent; the notifications the server still holds after the reader's ``last_sequence`` are republished
  first, in order (one gone meanwhile is skipped), then the subscription's publish responses are routed
  to ``session.on_publish``. False (logged at INFO) when the server refuses: the caller creates anew.
"""

from __future__ import annotations

import logging
import math

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaStatusCodeError

from edge_gateway.sources.opcua.config import OpcUaSource
from edge_gateway.sources.opcua.nodes import Item, chunks
from edge_gateway.sources.opcua.session import Session, describe

_log = logging.getLogger(__name__)

# The server keeps the subscription 10 keep-alives without publish requests.
_LIFETIME_KEEPALIVES = 10
_DEADBAND = {"absolute": ua.DeadbandType.Absolute, "percent": ua.DeadbandType.Percent}


def keepalive_count(config: OpcUaSource) -> int:
    return max(1, math.ceil(config.keepalive_s * 1000 / config.publishing_interval_ms))


def stall_after(config: OpcUaSource, interval_ms: float, keepalive_count: int) -> float:
    return 2 * interval_ms * keepalive_count / 1000 + config.timeout_s


async def take_over(client: Client, session: Session, config: OpcUaSource, sub_id: int, subscribed: list[str]) -> bool:
    """Take over subscription ``sub_id`` of the previous session; False: the server refused it."""
    params = ua.TransferSubscriptionsParameters(SubscriptionIds=[sub_id], SendInitialValues=True)
    try:
        results = await client.uaclient.transfer_subscriptions(params)
    except UaStatusCodeError as exc:  # e.g. BadServiceUnsupported
        _log.info(
            "opcua %s: TransferSubscriptions refused (%s); creating a new subscription", config.name, describe(exc)
        )
        return False
    if not results or not results[0].StatusCode.is_good():
        code = results[0].StatusCode.name if results else "no result"
        _log.info("opcua %s: subscription %d not transferable (%s); creating a new one", config.name, sub_id, code)
        return False
    # Notifications the server sent but we never got (in flight at the cut) come first, in order.
    for seq in sorted(int(s) for s in results[0].AvailableSequenceNumbers or []):
        if seq > session.reader.last_sequence:
            try:
                message = await client.uaclient.session.republish(sub_id, seq)
            except UaStatusCodeError:  # BadMessageNotAvailable: gone from the server's queue meanwhile
                continue
            await session.on_publish(ua.PublishResult(SubscriptionId=sub_id, NotificationMessage=message))
    # asyncua has no public call to route a transferred subscription's publish responses;
    # Subscription.restore() registers it the same way.
    client.uaclient.session._subscription_callbacks[sub_id] = session.on_publish  # noqa: SLF001
    client.uaclient.ensure_publish_loop()
    session.subscription_id = sub_id
    session.subscribed = list(subscribed)
    session.last_publish = session.last_data = session.clock()
    session.first_publish_within_s = 2 * config.publishing_interval_ms / 1000 + config.timeout_s
    session.stall_after_s = stall_after(config, float(config.publishing_interval_ms), keepalive_count(config))
    return True


async def create_subscription(
    client: Client,
    session: Session,
    config: OpcUaSource,
    wanted: list[tuple[Item, ua.NodeId]],
    refused: dict[str, tuple[str, int | str]],
) -> None:
    c = config
    keepalive = keepalive_count(c)
    params = ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=float(c.publishing_interval_ms),
        RequestedLifetimeCount=keepalive * _LIFETIME_KEEPALIVES,
        RequestedMaxKeepAliveCount=keepalive,
        MaxNotificationsPerPublish=0,  # no limit
        PublishingEnabled=True,
        Priority=0,
    )
    result = await client.uaclient.create_subscription(params, session.on_publish)
    session.subscription_id = int(result.SubscriptionId)
    session.last_publish = session.last_data = session.clock()
    session.stall_after_s = stall_after(c, result.RevisedPublishingInterval, int(result.RevisedMaxKeepAliveCount))
    for chunk in chunks(wanted, session.limits["monitored"]):
        request = ua.CreateMonitoredItemsParameters(
            SubscriptionId=result.SubscriptionId,
            TimestampsToReturn=ua.TimestampsToReturn.Both,
            ItemsToCreate=[_monitored_item(item, nid) for item, nid in chunk],
        )
        results = await client.uaclient.create_monitored_items(request)
        for (item, _), created in zip(chunk, results, strict=True):
            code = created.StatusCode
            if code.is_good():
                session.subscribed.append(item.alias)
            else:
                msg = f"node {item.where!r} ({item.alias}): {code.name} ({code.value:#010x})"
                refused[item.alias] = (msg, int(code.value))


def _monitored_item(item: Item, nid: ua.NodeId) -> ua.MonitoredItemCreateRequest:
    parameters = ua.MonitoringParameters(
        ClientHandle=item.handle,
        SamplingInterval=float(item.sampling_interval_ms),
        QueueSize=item.queue_size,
        DiscardOldest=True,
    )
    deadband = _DEADBAND.get(item.deadband_type)
    if deadband is not None:
        parameters.Filter = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValue, DeadbandType=deadband, DeadbandValue=item.deadband_value
        )
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=nid, AttributeId=AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting,
        RequestedParameters=parameters,
    )
