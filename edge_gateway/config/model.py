"""The one configuration document (local file; later also the device shadow).

Pydantic v2 models, ``extra="forbid"`` and frozen everywhere, so a typo is an error that names its
field. Sources and destinations are discriminated unions on ``type``. Durations and sizes carry their
unit in the name; every number has a minimum and a maximum. ``load_config(path)`` reads JSON or YAML and
raises ``ConfigError`` listing every field error as ``path: message``; nothing is started before the whole
document validates, including what no single field shows: every formatted topic within IoT Core's limits
and off the status and audit topics (config/topics.py), and the sums over all sources within ``limits``
(config/budget.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edge_gateway.config.budget import LimitsSettings, budget_errors
from edge_gateway.config.common import (
    BASE_DIR,
    DOCUMENT_ERRORS,
    NAME_PATTERN,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    LocalPath,
    Model,
    Reconnecting,
    check_unique,
    document_errors,
)
from edge_gateway.config.topics import (
    SITEWISE_TYPES,
    TopicTemplate,
    check_publish_template,
    check_template,
    topic_errors,
)
from edge_gateway.errors import ConfigError, FieldError
from edge_gateway.sources.modbus.config import ModbusTcpSource
from edge_gateway.sources.opcua.config import OpcUaSource

_MISSING_FOR_DIRECT = "missing_for_direct_mqtt"


class GatewaySettings(Model):
    thing_name: str = Field(pattern=r"^[a-zA-Z0-9:_\-]{1,128}$", description="AWS IoT thing name")
    data_dir: LocalPath = Field(
        default=Path("var"), validate_default=True, description="where the buffer and state live"
    )


class BufferSettings(Model):
    type: Literal["disk", "memory"] = "disk"
    # Default: <data_dir>/buffer
    path: LocalPath | None = None
    max_bytes: int = Field(default=1 << 30, ge=1 << 20, le=1 << 40)
    max_age_s: float = Field(default=7 * 86400, ge=1, le=366 * 86400)
    when_full: Literal["drop_oldest", "reject_new"] = "drop_oldest"
    segment_bytes: int = Field(default=8 << 20, ge=4096, le=1 << 30)
    # 0 = fsync every group commit (default); N > 0 = at most one fsync per N ms (appends still return
    # only once their bytes are written, and are durable within N ms).
    fsync_interval_ms: int = Field(default=0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _segments_fit(self) -> BufferSettings:
        if self.segment_bytes * 2 > self.max_bytes:
            msg = f"segment_bytes ({self.segment_bytes}) must be at most half of max_bytes ({self.max_bytes})"
            raise ValueError(msg)
        return self


SourceConfig = Annotated[OpcUaSource | ModbusTcpSource, Field(discriminator="type")]


class HttpProxySettings(Model):
    """An HTTP proxy the plant requires for outbound connections (HTTP CONNECT tunnel)."""

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    username: str | None = None
    # A file holding the password (kept out of the config and the shadow; never logged).
    password_file: LocalPath | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> Self:
        if (self.username is None) != (self.password_file is None):
            msg = "username and password_file go together (Basic authentication) or are both left out"
            raise ValueError(msg)
        return self


class MqttSettings(Reconnecting):
    # direct = the gateway's own MQTT connection (endpoint, certificate and key required); greengrass_ipc =
    # through the Greengrass nucleus (PublishToIoTCore and ShadowManager over IPC, docs/deployment.md),
    # with no connection of its own: then only ack_timeout_s and the reconnect delays below are used.
    mode: Literal["direct", "greengrass_ipc"] = "direct"
    # Required with mode "direct" (the default "" means not set).
    endpoint: str = Field(default="", description="IoT Core ATS endpoint or a local broker host")
    port: int = Field(default=443, ge=1, le=65535)
    # Default: "<thing_name>-gateway" (the Greengrass nucleus already uses the thing name).
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    ca_file: LocalPath | None = None
    cert_file: LocalPath | None = None  # required with mode "direct"
    key_file: LocalPath | None = None  # required with mode "direct"
    keep_alive_s: int = Field(default=30, ge=5, le=1200)
    ping_timeout_ms: int = Field(default=3000, ge=100, le=60_000)
    ack_timeout_s: int = Field(default=10, ge=1, le=600)
    # awscrt resets its backoff only after 30 s connected: a low ceiling keeps a flapping link from
    # leaving the gateway offline for minutes after the network is back.
    reconnect_max_s: float = Field(default=30.0, ge=RECONNECT_MIN_S, le=RECONNECT_MAX_S)
    # Keep awscrt's AWS IoT Core flow control (100 publishes/s, ~512 KiB/s) on; turn off only for a
    # local broker in benchmarks.
    iot_core_flow_control: bool = True
    proxy: HttpProxySettings | None = None

    @model_validator(mode="after")
    def _direct_needs_a_connection(self) -> Self:
        if self.mode != "direct":
            return self
        missing = [name for name in ("endpoint", "cert_file", "key_file") if not getattr(self, name)]
        if missing:
            # Reported by field_errors as "<path>.<field>: Field required", like any required field.
            raise PydanticCustomError(
                _MISSING_FOR_DIRECT, "{missing} required with mode direct", {"missing": ",".join(missing)}
            )
        return self

    @property
    def ipc(self) -> bool:
        return self.mode == "greengrass_ipc"


class DestinationBase(Model):
    """What every destination has: its own buffer cursor (by name), batching, in-flight window, refusals."""

    name: str = Field(pattern=NAME_PATTERN)
    max_message_bytes: int = Field(default=126_000, ge=1024, le=128_000)
    max_latency_ms: int = Field(default=1000, ge=1, le=60_000)
    max_in_flight: int = Field(default=16, ge=1, le=100)
    # PUBACK reason codes that are refusals for good: the message goes to the dead-letter file instead of
    # being retried. Default: not authorized (135), topic name invalid (144), packet too large (149),
    # payload format invalid (153). Remove 135 to hold the backlog and retry while a policy is fixed.
    dead_letter_codes: tuple[int, ...] = Field(default=(0x87, 0x90, 0x95, 0x99), max_length=128)

    @field_validator("dead_letter_codes")
    @classmethod
    def _failure_codes(cls, codes: tuple[int, ...]) -> tuple[int, ...]:
        wrong = [c for c in codes if not 0x80 <= c <= 0xFF]  # noqa: PLR2004 - MQTT 5 failure codes
        if wrong:
            msg = f"{wrong} are not MQTT 5 failure reason codes (128..255)"
            raise ValueError(msg)
        return codes


class IotCoreDestination(DestinationBase):
    type: Literal["iotcore"]
    # A Basic Ingest topic ($aws/rules/<rule>/...) skips the message broker's charges.
    topic: str = Field(default="dt/{thing}/{source}", min_length=1, max_length=1000)

    @field_validator("topic")
    @classmethod
    def _topic_shape(cls, topic: str) -> str:
        return check_publish_template(topic, {"thing", "source"})


class SiteWiseDestination(DestinationBase):
    """BatchPutAssetPropertyValue bodies for an IoT rule's iotSiteWise action (docs/sitewise.md)."""

    type: Literal["sitewise"]
    # One rule per value type ({type}: double, integer, boolean, string), Basic Ingest by default.
    topic: str = Field(default="$aws/rules/edge_sitewise_{type}/{thing}/{source}", min_length=1, max_length=1000)
    # The SiteWise property alias of a point; placeholders {thing}, {source}, {point}.
    alias: str = Field(default="/{thing}/{source}/{point}", min_length=1, max_length=1000)

    @field_validator("topic")
    @classmethod
    def _topic_shape(cls, topic: str) -> str:
        return check_publish_template(topic, {"thing", "source", "type"})

    @field_validator("alias")
    @classmethod
    def _alias_shape(cls, alias: str) -> str:
        return check_template(alias, {"thing", "source", "point"})


DestinationConfig = Annotated[IotCoreDestination | SiteWiseDestination, Field(discriminator="type")]


class DeadLetterSettings(Model):
    # What the cloud can never take (a permanent refusal, a value SiteWise cannot accept): JSON lines.
    # Default path: <data_dir>/dead-letter.jsonl. Disk use is at most (max_files + 1) * max_file_bytes.
    path: LocalPath | None = None
    max_file_bytes: int = Field(default=16 << 20, ge=4096, le=1 << 30)
    max_files: int = Field(default=4, ge=0, le=100)


class PublisherSettings(Model):
    mqtt: MqttSettings
    destinations: list[DestinationConfig] = Field(min_length=1, max_length=32)
    dead_letter: DeadLetterSettings = DeadLetterSettings()

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, dests: list[DestinationConfig]) -> list[DestinationConfig]:
        check_unique([d.name for d in dests], "name")
        return dests


class StatusSettings(Model):
    # A small JSON file the running gateway rewrites so `edge-gateway status` and the demo can show it.
    file: LocalPath | None = None
    # At least 0.2 s (tests/faults watch the status that closely): a rewrite costs a small fsync'd file.
    interval_s: float = Field(default=2.0, ge=0.2, le=3600)


class HeartbeatSettings(Model):
    """The status on MQTT (publish/presence.py): presence ``online`` on every connect, ``stopped`` on a clean
    shutdown, the Last Will ``offline`` when the connection dies uncleanly, and a fresh status snapshot every
    ``interval_s`` (and right after every connect). Also a health summary in the shadow's ``reported``."""

    interval_s: float = Field(default=60.0, ge=1, le=86_400)
    # Placeholder: {thing}. A Basic Ingest topic ($aws/rules/<rule>/...) works too.
    topic: str = Field(default="dt/{thing}/status", min_length=1, max_length=1000)
    # The health summary goes to the shadow only when something material changed, at most this often.
    shadow_min_interval_s: float = Field(default=300.0, ge=1, le=86_400)
    shadow_report: bool = True

    @field_validator("topic")
    @classmethod
    def _status_topic(cls, topic: str) -> str:
        return check_publish_template(topic, {"thing"})


class MetricsSettings(Model):
    """An optional Prometheus endpoint (``GET /metrics``) for plants that already run Prometheus/Grafana."""

    enabled: bool = False
    # Loopback by default: the figures are for this machine's Prometheus, not for the plant network.
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=9108, ge=1, le=65535)


class AuditSettings(Model):
    """The GxP audit trail (docs/gxp.md): a hash-chained local log of configuration and security events,
    also published to ``topic``. Local only: a shadow can neither change nor switch it off."""

    enabled: bool = True
    dir: LocalPath | None = None  # default <data_dir>/audit
    # Placeholder: {thing}. Also carries the data provenance declarations (docs/message-format.md).
    topic: str = Field(default="dt/{thing}/audit", min_length=1, max_length=1000)
    max_file_bytes: int = Field(default=16 << 20, ge=4096, le=1 << 30)
    # None keeps every file for the archive job to collect; N deletes the oldest beyond N.
    max_files: int | None = Field(default=None, ge=1, le=100_000)

    @field_validator("topic")
    @classmethod
    def _audit_topic(cls, topic: str) -> str:
        return check_publish_template(topic, {"thing"})


class ShadowSettings(Model):
    """Remote configuration through a named device shadow (docs/configuration.md, "Device shadow")."""

    enabled: bool = True
    name: str = Field(default="edge-gateway", pattern=r"^[a-zA-Z0-9:_\-]{1,64}$")
    # How long to wait for an answer from the shadow service before asking again (with backoff).
    request_timeout_s: float = Field(default=10.0, ge=0.5, le=300)
    # After applying a change: if the cloud connection stays down, or a changed source does not connect,
    # for this long, the previous config is restored and "rolled_back" reported.
    confirm_window_s: float = Field(default=120.0, ge=1, le=3600)
    # Endpoints ("host" or "host:port") the shadow may move the cloud connection to. Empty (the default):
    # the endpoint and port are local only. The local file's own endpoint is always allowed.
    allowed_endpoints: tuple[str, ...] = ()
    # Hosts or CIDRs (IPv4/IPv6) that sources the shadow adds or moves may connect to. None (the default):
    # the hosts the local file's sources already name.
    allowed_source_hosts: tuple[str, ...] | None = None


class GatewayConfig(Model):
    version: Literal[1] = 1
    gateway: GatewaySettings
    buffer: BufferSettings = BufferSettings()
    # May be empty (or left out): the gateway then starts, connects and heartbeats, and takes its sources
    # from the device shadow (a Greengrass deployment for a whole thing group, each gateway by its shadow).
    sources: list[SourceConfig] = Field(default_factory=list, max_length=1000)
    publisher: PublisherSettings
    status: StatusSettings = StatusSettings()
    heartbeat: HeartbeatSettings = HeartbeatSettings()
    metrics: MetricsSettings = MetricsSettings()
    audit: AuditSettings = AuditSettings()
    shadow: ShadowSettings = ShadowSettings()
    limits: LimitsSettings = LimitsSettings()

    @field_validator("sources")
    @classmethod
    def _unique_source_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        check_unique([s.name for s in sources], "name")
        return sources

    @model_validator(mode="after")
    def _whole_document(self) -> Self:
        """Topics formatted with the real names, and the sums over all sources (config/topics.py, budget.py)."""
        dests = [
            TopicTemplate(
                f"publisher.destinations.{i}.{d.type}", d.topic, SITEWISE_TYPES if d.type == "sitewise" else ()
            )
            for i, d in enumerate(self.publisher.destinations)
        ]
        reserved = [("heartbeat", self.status_topic), ("audit", self.audit_topic)]
        errors = topic_errors(self.gateway.thing_name, [s.name for s in self.sources], dests, reserved)
        loads = [(f"sources.{i}.{s.type}", s.name, s.load) for i, s in enumerate(self.sources)]
        errors += budget_errors(self.limits, loads)
        if errors:
            raise document_errors(errors)
        return self

    @property
    def client_id(self) -> str:
        if self.publisher.mqtt.ipc:  # the nucleus' own connection, whose client id is the thing name
            return self.gateway.thing_name
        return self.publisher.mqtt.client_id or f"{self.gateway.thing_name}-gateway"

    @property
    def buffer_path(self) -> Path:
        return self.buffer.path or self.gateway.data_dir / "buffer"

    @property
    def dead_letter_path(self) -> Path:
        return self.publisher.dead_letter.path or self.gateway.data_dir / "dead-letter.jsonl"

    @property
    def status_topic(self) -> str:
        return self.heartbeat.topic.format(thing=self.gateway.thing_name)

    @property
    def status_path(self) -> Path:
        return self.status.file or self.gateway.data_dir / "status.json"

    @property
    def audit_path(self) -> Path:
        return self.audit.dir or self.gateway.data_dir / "audit"

    @property
    def audit_topic(self) -> str:
        return self.audit.topic.format(thing=self.gateway.thing_name)

    @property
    def last_heartbeat_path(self) -> Path:
        """The last heartbeat the broker acknowledged, byte for byte, beside the status file."""
        return self.status_path.with_suffix(".heartbeat.json")

    @property
    def shadow_state_path(self) -> Path:
        """The last shadow config applied, kept so a boot without network runs it again."""
        return self.gateway.data_dir / "shadow" / f"{self.shadow.name}.applied.json"


def field_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "(document)"
        if err["type"] == DOCUMENT_ERRORS:  # config/common.py: several paths in one error
            prefix = f"{path}." if err["loc"] else ""
            errors += [FieldError(prefix + where, message) for where, message in err["ctx"]["errors"]]
            continue
        if err["type"] == _MISSING_FOR_DIRECT:
            errors += [FieldError(f"{path}.{name}", "Field required") for name in err["ctx"]["missing"].split(",")]
            continue
        errors.append(FieldError(path, err["msg"]))
    return errors


def parse_config(data: Any, origin: str = "<document>", *, base_dir: Path | None = None) -> GatewayConfig:  # noqa: ANN401 - raw document
    """Validate a whole document; relative paths are taken from ``base_dir`` when given (config/common.py)."""
    try:
        return GatewayConfig.model_validate(data, context={BASE_DIR: base_dir} if base_dir is not None else None)
    except ValidationError as exc:
        raise ConfigError(origin, field_errors(exc)) from exc


def load_config(path: Path) -> GatewayConfig:
    origin = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(origin, [FieldError("(file)", f"cannot read: {exc.strerror}")]) from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(origin, [FieldError("(file)", f"not valid {path.suffix[1:] or 'YAML'}: {exc}")]) from exc
    # Relative paths in the file are relative to the file, not to the working directory.
    return parse_config(data, origin, base_dir=path.parent)
