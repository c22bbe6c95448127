"""Settings of an OPC UA source (``sources[]`` with ``type: opcua``); reference: docs/opcua.md.

The original form (``endpoint``, ``publishing_interval_ms``, ``nodes[alias, node_id]``) stays valid: its
``nodes`` are the source's default subscription group. ``groups`` add more, each subscribed or polled.
Relative paths (``security.cert_dir``, ``security.trust_dir``, ``auth.password_file``) are resolved
against the config file's folder (``LocalPath``, config/common.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from edge_gateway.config.common import (
    ALIAS_PATTERN,
    NAME_PATTERN,
    LocalPath,
    Model,
    Reconnecting,
    SourceLoad,
    check_unique,
)

# Deadband in engineering units: any plant figure, but finite and bounded (docs/configuration.md, "Ranges").
MAX_DEADBAND = 1e12

SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]
SecurityPolicy = Literal["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
DeadbandType = Literal["none", "absolute", "percent"]


def split_browse_path(path: str) -> list[str]:
    """Elements of a browse path: "/" separates them only before "<digits>:" or "nsu=", so namespace URIs
    (which contain "/") need no escaping."""
    return re.split(r"/(?=\d+:|nsu=)", path)


class OpcUaNode(Model):
    alias: str = Field(pattern=ALIAS_PATTERN)
    node_id: str | None = Field(default=None, min_length=1, description='NodeId, e.g. "ns=2;s=Line1.Counter"')
    # Resolved with TranslateBrowsePathsToNodeIds on every connect, starting at the Objects folder, so a
    # server that renumbers its nodes or namespaces still works: "2:Line1/2:Counter" (namespace index and
    # browse name per element, "/" between), or with the namespace URI: "nsu=urn:plc;Line1/nsu=urn:plc;Counter".
    browse_path: str | None = Field(default=None, min_length=1)
    deadband_type: DeadbandType | None = None  # None: the group's
    deadband_value: float | None = Field(default=None, ge=0, le=MAX_DEADBAND)
    sampling_interval_ms: int | None = Field(default=None, ge=0, le=3_600_000)
    queue_size: int | None = Field(default=None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _one_address(self) -> Self:
        if (self.node_id is None) == (self.browse_path is None):
            msg = f"node {self.alias!r}: set exactly one of node_id and browse_path"
            raise ValueError(msg)
        if self.browse_path is not None:
            for element in split_browse_path(self.browse_path):
                if not element.startswith("nsu=") and not re.fullmatch(r"\d+:[^/]+", element):
                    msg = (
                        f"node {self.alias!r}: browse_path element {element!r} must be '<ns index>:<name>'"
                        " or 'nsu=<namespace URI>;<name>'"
                    )
                    raise ValueError(msg)
                if element.startswith("nsu=") and ";" not in element:
                    msg = f"node {self.alias!r}: browse_path element {element!r} needs 'nsu=<URI>;<name>'"
                    raise ValueError(msg)
        return self


class _Sampling(Model):
    sampling_interval_ms: int = Field(default=0, ge=0, le=3_600_000)
    queue_size: int = Field(default=100, ge=1, le=10_000)
    deadband_type: DeadbandType = "none"
    deadband_value: float = Field(default=0.0, ge=0, le=MAX_DEADBAND)


class OpcUaGroup(_Sampling):
    name: str = Field(pattern=NAME_PATTERN)
    # subscribe: monitored items of the source's subscription; poll: batched Read every poll_interval_ms.
    mode: Literal["subscribe", "poll"] = "subscribe"
    poll_interval_ms: int = Field(default=1000, ge=10, le=3_600_000)
    nodes: list[OpcUaNode] = Field(min_length=1)


class OpcUaSecurity(Model):
    mode: SecurityMode = "None"
    policy: SecurityPolicy = "Basic256Sha256"
    # The client's key and certificate, created once on first use and kept (client_key.pem, client_cert.der).
    cert_dir: LocalPath = Field(default=Path("opcua-pki"), validate_default=True)
    # Server certificates (DER or PEM) we trust; default <cert_dir>/trusted. A server whose certificate
    # is not here is refused.
    trust_dir: LocalPath | None = None
    # Trust (and save into trust_dir) the certificate of a server whose application URI has no
    # certificate in the trust list yet. Off by default: only for commissioning.
    trust_on_first_use: bool = False
    # Default: urn:<hostname>:edge-gateway. Goes into the client certificate's SubjectAltName.
    application_uri: str | None = Field(default=None, min_length=1)

    @property
    def trust_path(self) -> Path:
        return self.trust_dir if self.trust_dir is not None else self.cert_dir / "trusted"


class OpcUaAuth(Model):
    username: str = Field(min_length=1)
    # The password comes from a file (first line, trailing newline stripped) or an environment variable;
    # never from the config itself (the config may travel through the shadow), never logged.
    password_file: LocalPath | None = None
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.password_file is None) == (self.password_env is None):
            msg = "auth: set exactly one of password_file and password_env"
            raise ValueError(msg)
        return self


class OpcUaSource(Reconnecting, _Sampling):
    type: Literal["opcua"]
    name: str = Field(pattern=NAME_PATTERN)
    endpoint: str = Field(pattern=r"^opc\.tcp://", description="opc.tcp://host:port[/path]")
    publishing_interval_ms: int = Field(default=500, ge=10, le=3_600_000)
    timeout_s: float = Field(default=10.0, ge=0.1, le=300)
    # The server sends a keep-alive after this long without data; no publish response (data or
    # keep-alive) for twice that plus timeout_s means the subscription is stalled: it is re-created.
    keepalive_s: float = Field(default=5.0, ge=0.1, le=600)
    # Data-age watchdog: no data change on any subscribed node for this long re-creates the
    # subscription (for servers that keep sending keep-alives from a dead subscription). None = off.
    max_data_age_s: float | None = Field(default=None, ge=0.1, le=86_400)
    # The reading's timestamp: the SourceTimestamp (falling back to the server's), the ServerTimestamp
    # (falling back to the source's), or neither (the gateway's clock only).
    timestamp: Literal["source", "server", "gateway"] = "source"
    security: OpcUaSecurity = OpcUaSecurity()
    auth: OpcUaAuth | None = None
    # Operation limits used when the server advertises none (0) for a service.
    max_items_per_call: int = Field(default=1000, ge=1, le=100_000)
    # Bounds on what the server sends (limits.py; docs/opcua.md "Limits"). A response over either transport
    # limit is dropped as it arrives and its request fails; a value over max_value_bytes is a BAD reading.
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=65_536, le=256 * 1024 * 1024)
    max_chunk_count: int = Field(default=256, ge=1, le=8192)
    max_value_bytes: int = Field(default=1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    # Required (as it always was), unless groups are given: then it defaults to [].
    nodes: list[OpcUaNode]
    groups: list[OpcUaGroup] = Field(default_factory=list, max_length=64)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        if "nodes" not in data and data.get("groups"):
            data = data | {"nodes": []}
        return data

    @model_validator(mode="after")
    def _nodes_and_groups(self) -> Self:
        if not self.nodes and not any(g.nodes for g in self.groups):
            msg = "nodes: at least one node (in nodes or in groups[].nodes)"
            raise ValueError(msg)
        check_unique([n.alias for n in self.all_nodes()], "alias")
        check_unique([g.name for g in self.groups], "group name")
        groups: list[_Sampling] = [*self.groups, self]
        for group, nodes in zip(groups, [*(g.nodes for g in self.groups), self.nodes], strict=True):
            for node in nodes:
                kind = node.deadband_type or group.deadband_type
                value = node.deadband_value if node.deadband_value is not None else group.deadband_value
                if kind == "percent" and value > 100:  # noqa: PLR2004
                    msg = f"node {node.alias!r}: deadband_value {value} is a percentage (0..100)"
                    raise ValueError(msg)
        if self.security.mode == "None" and self.auth is not None:
            # The password would cross the wire in clear text.
            msg = "auth needs security.mode Sign or SignAndEncrypt (a password is never sent unencrypted)"
            raise ValueError(msg)
        return self

    def all_nodes(self) -> list[OpcUaNode]:
        return [*self.nodes, *(n for g in self.groups for n in g.nodes)]

    @property
    def load(self) -> SourceLoad:
        """One session to the endpoint's host. A polled node: one value per poll. A subscribed node: one per
        sampling interval (the publishing interval when sampling is 0, "as fast as the server samples"), at
        most its queue per publishing interval."""
        per_s = 0.0
        publish_per_s = 1000 / self.publishing_interval_ms
        for group, nodes in [(self, self.nodes), *((g, g.nodes) for g in self.groups)]:
            for node in nodes:
                if isinstance(group, OpcUaGroup) and group.mode == "poll":
                    per_s += 1000 / group.poll_interval_ms
                    continue
                sampling = node.sampling_interval_ms
                sampling = group.sampling_interval_ms if sampling is None else sampling
                queue = node.queue_size or group.queue_size
                per_s += min(1000 / sampling, queue * publish_per_s) if sampling else publish_per_s
        try:
            host = urlsplit(self.endpoint).hostname or self.endpoint
        except ValueError:  # "opc.tcp://[::1" : count it under the endpoint as written
            host = self.endpoint
        return SourceLoad(host=host, connections=1, points=len(self.all_nodes()), points_per_s=per_s)
