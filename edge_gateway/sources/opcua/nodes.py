"""Configured nodes to server NodeIds, within the server's operation limits.

Contract:
- Every configured node is one ``Item`` with its own client handle (1..n in config order), so two
  aliases of one node are two monitored items and every notification maps to exactly one alias.
- Resolution happens on every connect (namespace indexes and numeric ids may change when a server is
  upgraded or restarted): ``nsu=`` node ids through the server's NamespaceArray, browse paths through
  TranslateBrowsePathsToNodeIds from the Objects folder. A node that cannot be resolved is refused with
  a reason (the server's StatusCode, or text); the rest go on.
- ``OperationLimits`` come from the server's ServerCapabilities; 0 (or unreadable) means "not advertised"
  and the configured ``max_items_per_call`` is used. Every multi-node request is cut into chunks of at
  most the limit for its service.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError

from edge_gateway.sources.opcua.config import OpcUaGroup, OpcUaNode, OpcUaSource, split_browse_path

_T = TypeVar("_T")
_LIMIT_IDS = {
    "read": ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    "register": ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRegisterNodes,
    "monitored": ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
    "translate": ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
}


async def server_started(client: Client) -> object:
    """The server's ServerStatus.StartTime: another value means another server process."""
    params = ua.ReadParameters()
    params.NodesToRead = [
        ua.ReadValueId(
            NodeId=ua.NodeId(ua.Int32(ObjectIds.Server_ServerStatus_StartTime)), AttributeId=AttributeIds.Value
        )
    ]
    (dv,) = await client.uaclient.read(params)
    return dv.Value.Value if dv.Value is not None else None


DEFAULT_GROUP = "default"


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    poll_interval_ms: int | None  # None: subscribed


@dataclass(frozen=True, slots=True)
class Item:
    handle: int  # the monitored item's client handle
    alias: str
    where: str  # the node id or browse path as configured, for messages
    group: Group
    parsed: ua.NodeId | None  # None: browse path, or a node id that can never work (then problem is set)
    problem: str | None
    sampling_interval_ms: int
    queue_size: int
    deadband_type: str
    deadband_value: float


def build_items(config: OpcUaSource) -> list[Item]:
    groups: list[tuple[Group, OpcUaSource | OpcUaGroup]] = (
        [(Group(DEFAULT_GROUP, None), config)] if config.nodes else []
    )
    groups.extend((Group(g.name, g.poll_interval_ms if g.mode == "poll" else None), g) for g in config.groups)
    items: list[Item] = []
    for group, settings in groups:
        for node in settings.nodes:
            items.append(_item(len(items) + 1, node, group, settings))
    return items


def _item(handle: int, node: OpcUaNode, group: Group, settings: OpcUaSource | OpcUaGroup) -> Item:
    parsed: ua.NodeId | None = None
    problem: str | None = None
    if node.node_id is not None:
        where = node.node_id
        try:
            parsed = ua.NodeId.from_string(node.node_id)
        except UaError as exc:
            problem = f"node {where!r} ({node.alias}): not a valid NodeId: {exc.__cause__ or exc}"
        else:
            if isinstance(parsed, ua.ExpandedNodeId) and parsed.ServerIndex:
                parsed, problem = None, f"node {where!r} ({node.alias}): srv= (another server) is not supported"
    else:
        assert node.browse_path is not None
        where = node.browse_path
    return Item(
        handle=handle,
        alias=node.alias,
        where=where,
        group=group,
        parsed=parsed,
        problem=problem,
        sampling_interval_ms=(
            node.sampling_interval_ms if node.sampling_interval_ms is not None else settings.sampling_interval_ms
        ),
        queue_size=node.queue_size if node.queue_size is not None else settings.queue_size,
        deadband_type=node.deadband_type or settings.deadband_type,
        deadband_value=node.deadband_value if node.deadband_value is not None else settings.deadband_value,
    )


def chunks(seq: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


async def read_limits(client: Client, default: int) -> dict[str, int]:
    """Per service ("read", "register", "monitored", "translate"): at most this many nodes per request."""
    params = ua.ReadParameters()
    params.NodesToRead = [
        ua.ReadValueId(NodeId=ua.NodeId(ua.Int32(oid)), AttributeId=AttributeIds.Value) for oid in _LIMIT_IDS.values()
    ]
    results = await client.uaclient.read(params)
    limits: dict[str, int] = {}
    for key, dv in zip(_LIMIT_IDS, results, strict=True):
        good = dv.StatusCode is None or dv.StatusCode.is_good()
        value = dv.Value.Value if dv.Value is not None and good else None
        limits[key] = int(value) if isinstance(value, int) and value > 0 else default
    return limits


@dataclass(slots=True)
class Resolved:
    nodes: list[tuple[Item, ua.NodeId]]
    refused: dict[str, tuple[str, int | str]]  # alias -> (message, Reading.status)


def _path_elements(path: str, namespaces: list[str]) -> list[ua.RelativePathElement] | str:
    elements = []
    for part in split_browse_path(path):
        if part.startswith("nsu="):
            uri, _, name = part[4:].partition(";")
            if uri not in namespaces:
                return f"namespace {uri!r} is not on the server"
            ns = namespaces.index(uri)
        else:
            index, _, name = part.partition(":")
            ns = int(index)
        elements.append(
            ua.RelativePathElement(
                ReferenceTypeId=ua.NodeId(ua.Int32(ObjectIds.HierarchicalReferences)),
                IsInverse=False,  # type: ignore[arg-type]
                IncludeSubtypes=True,  # type: ignore[arg-type]
                TargetName=ua.QualifiedName(name, ns),
            )
        )
    return elements


async def resolve(client: Client, items: Sequence[Item], limits: dict[str, int]) -> Resolved:
    out = Resolved([], {})
    namespaces: list[str] | None = None
    paths: list[tuple[Item, list[ua.RelativePathElement]]] = []
    for item in items:
        nid = item.parsed
        if item.problem is not None:
            out.refused[item.alias] = (item.problem, item.problem)
            continue
        needs_namespaces = nid is None or (isinstance(nid, ua.ExpandedNodeId) and bool(nid.NamespaceUri))
        if needs_namespaces and namespaces is None:
            namespaces = list(await client.get_namespace_array())
        if nid is None:
            assert namespaces is not None
            elements = _path_elements(item.where, namespaces)
            if isinstance(elements, str):
                msg = f"browse path {item.where!r} ({item.alias}): {elements}"
                out.refused[item.alias] = (msg, msg)
            else:
                paths.append((item, elements))
            continue
        if isinstance(nid, ua.ExpandedNodeId) and nid.NamespaceUri:
            assert namespaces is not None
            if nid.NamespaceUri not in namespaces:
                msg = f"node {item.where!r} ({item.alias}): namespace {nid.NamespaceUri!r} is not on the server"
                out.refused[item.alias] = (msg, msg)
                continue
            nid = ua.NodeId(nid.Identifier, ua.Int16(namespaces.index(nid.NamespaceUri)), nid.NodeIdType)
        out.nodes.append((item, nid))
    await _translate(client, paths, limits["translate"], out)
    out.nodes.sort(key=lambda pair: pair[0].handle)
    return out


async def _translate(
    client: Client, paths: list[tuple[Item, list[ua.RelativePathElement]]], limit: int, out: Resolved
) -> None:
    for chunk in chunks(paths, limit):
        requests = [
            ua.BrowsePath(
                StartingNode=ua.NodeId(ua.Int32(ObjectIds.ObjectsFolder)),
                RelativePath=ua.RelativePath(Elements=elements),
            )
            for _, elements in chunk
        ]
        results = await client.uaclient.translate_browsepaths_to_nodeids(requests)
        for (item, _), result in zip(chunk, results, strict=True):
            if result.StatusCode.is_good() and result.Targets:
                target = result.Targets[0].TargetId
                out.nodes.append((item, ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)))
            else:
                code = result.StatusCode
                msg = f"browse path {item.where!r} ({item.alias}): {code.name} ({code.value:#010x})"
                out.refused[item.alias] = (msg, int(code.value))
