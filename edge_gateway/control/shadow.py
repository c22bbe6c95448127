"""Shadow-driven configuration: follow a named device shadow's ``desired`` state and report the outcome.

Protocol (AWS IoT Device Shadow over MQTT, named shadow ``shadow.name`` on the gateway's thing):
- On every connect: ``get``. Then ``/update/delta`` (any change of desired) triggers another ``get``: a
  delta holds only the fields that differ, the config needs the whole desired document.
- Each desired document is validated whole against the local file (``shadow_config.effective_config``)
  before anything is touched. Valid: the gateway applies it by diff, the document is saved as the last
  good config, and ``reported`` mirrors it (so the delta clears) with ``config_status.status = "applied"``,
  the shadow version and the effective config's hash. Invalid: nothing changes and ``config_status`` says
  ``"rejected"`` with every error as ``{path, message}`` and the rejected version; the previous mirror
  stays, so the delta stays visible to the operator.
- The same desired content is handled once: a repeated delta (a report that leaves desired and reported
  different, e.g. after a rejection, makes the service publish another) does not re-apply or re-report it.
- After a change, ``confirm_window_s`` decides: confirmed once the cloud connection is up, every added or
  changed source has connected and every added or changed destination (every destination, when the MQTT
  connection changed) got a successful PUBACK for a message sent since the change. A destination that had
  nothing to send counts as confirmed at the end of the window if it had no failure since the change,
  nothing in flight, and the connection is up. Rolled back: the connection down for the whole window, such a
  source not connected or such a destination not acknowledged at its end, or at once when the broker
  refuses a destination's message for good (e.g. 135, not authorized: a policy refusal). Rolling back
  restores the previous config and reports ``"rolled_back"`` with the reason (when back online). That
  desired content is not applied again until it changes, across restarts too. Only a confirmed config is
  saved as the last good one.
- The audit trail fails closed (docs/gxp.md): a valid change is refused (``"rejected"``, error path
  ``(audit)``, nothing applied) while the trail cannot be written (it could not be opened at start, or
  ``AuditRecorder.check_writable`` fails); a confirmed change whose ``config.applied`` entry cannot be
  written is rolled back. Data collection goes on regardless. Entries carry the old and new values of
  every changed field, rejections the offending values (gxp/audit_values.py), secrets masked.
- A request that gets no answer within ``request_timeout_s``, or a 429/500 from the service, is asked again
  with jittered backoff; a 404 on ``get`` means no shadow yet: the gateway reports what it runs.
- ``reported`` keys the new mirror no longer has are sent as ``null`` (the service merges updates).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from typing import Any, Protocol

from edge_gateway.config.diff import ConfigDiff, config_hash, diff
from edge_gateway.config.model import GatewayConfig
from edge_gateway.control.confirm import Watched, probation, snapshot
from edge_gateway.control.desired import AppliedConfig, effective_config
from edge_gateway.errors import ConfigError, GatewayError, PublishError
from edge_gateway.gxp.audit import CONFIG_APPLIED, CONFIG_REJECTED, CONFIG_ROLLED_BACK, AuditError, changed_paths
from edge_gateway.gxp.audit_values import changed_values, offending_values
from edge_gateway.gxp.recorder import AuditRecorder
from edge_gateway.util.backoff import Backoff
from edge_gateway.util.jsondoc import canonical, loads, removed_as_null, sha256

_log = logging.getLogger(__name__)

_RETRYABLE_CODES = frozenset({429, 500, 503})
_NOT_FOUND = 404


class Reconfigurable(Watched, Protocol):
    """What the shadow agent needs of the running gateway (runtime/supervisor.py): what the confirm window
    watches (the connection its requests also go through, sources, publishers), the configs it builds on,
    the audit trail (None when disabled, or when it could not be opened: then ``audit_error`` says why), and
    ``apply`` (switch to a validated config by diff)."""

    @property
    def config(self) -> GatewayConfig: ...
    @property
    def local(self) -> GatewayConfig: ...
    @property
    def applied(self) -> AppliedConfig | None: ...
    @property
    def audit(self) -> AuditRecorder | None: ...
    @property
    def audit_error(self) -> str | None: ...
    async def apply(self, new: GatewayConfig) -> ConfigDiff: ...


class ShadowAgent:
    def __init__(self, gateway: Reconfigurable) -> None:
        self.gateway = gateway
        cfg = gateway.config
        self.settings = cfg.shadow
        self.path = cfg.shadow_state_path
        self.prefix = f"$aws/things/{cfg.gateway.thing_name}/shadow/name/{cfg.shadow.name}"
        self._applied = gateway.applied  # the last good shadow config (None: the local file alone)
        self._mirror: dict[str, Any] = dict(self._applied.desired) if self._applied else {}
        self._handled: bytes | None = canonical(self._mirror) if self._applied else None
        self._rolled_back = self._applied.rolled_back if self._applied else None
        self._unsent: tuple[dict[str, Any], dict[str, Any] | None] | None = None
        self._sent_status: dict[str, Any] = {}  # config_status as the shadow holds it
        self._tokens = itertools.count(1)
        self._client = f"gw-{secrets.token_hex(4)}"  # AWS caps clientToken at 64 bytes; client ids go to 128
        self._answers: dict[str, asyncio.Future[tuple[str, dict[str, Any]]]] = {}
        self._wake = asyncio.Event()
        self.last_status: dict[str, Any] | None = None  # the newest config_status, for the local status
        self.last_token: str | None = None  # clientToken of the newest request (recorded in the audit trail)

    @property
    def applied_version(self) -> int | None:
        """The shadow version of the config that runs; None when the local file alone runs."""
        return self._applied.version if self._applied is not None else None

    async def report_health(self, health: dict[str, Any]) -> bool:
        """Put ``health`` in ``reported.health`` (fleet indexing can query it). False if it did not get
        through and is worth trying again; a refusal for good (e.g. 413: the document is full) is logged
        and counts as done, so it is not sent again until the health changes."""
        try:
            await self._request("update", {"state": {"reported": {"health": health}}})
        except _RetryError as exc:
            _log.info("shadow %s: health not reported (%s); trying again at a later heartbeat", self.settings.name, exc)
            return False
        except _RejectedError as exc:
            _log.warning("shadow %s: health summary refused (%s)", self.settings.name, exc)
        return True

    async def run(self) -> None:
        transport = self.gateway.transport
        for topic in ("get/accepted", "get/rejected", "update/accepted", "update/rejected"):
            await transport.subscribe(f"{self.prefix}/{topic}", self._on_answer)
        await transport.subscribe(f"{self.prefix}/update/delta", self._on_delta)
        transport.on_connect(self._wake.set)
        if transport.connected:
            self._wake.set()
        backoff = Backoff(1.0, 300.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._sync()
            except _RetryError as exc:
                delay = backoff.next_delay()
                _log.warning("shadow %s: %s; asking again in %.0f s", self.settings.name, exc, delay)
                await asyncio.sleep(delay)
                self._wake.set()
            else:
                backoff.reset()

    def _on_delta(self, _topic: str, _payload: bytes) -> None:
        self._wake.set()

    def _on_answer(self, topic: str, payload: bytes) -> None:
        try:
            doc = loads(payload)
        except ValueError:
            _log.warning("shadow %s: unreadable answer on %s", self.settings.name, topic)
            return
        waiter = self._answers.pop(str(doc.get("clientToken")), None) if isinstance(doc, dict) else None
        if waiter is not None and not waiter.done():
            waiter.set_result((topic.rsplit("/", 1)[-1], doc))

    async def _request(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """Publish ``op`` with a fresh clientToken; the accepted document, or ``_RetryError``/``_RejectedError``."""
        token = f"{self._client}-{next(self._tokens)}"
        self.last_token = token
        waiter: asyncio.Future[tuple[str, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._answers[token] = waiter
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                payload = json.dumps({**body, "clientToken": token}).encode()
                await self.gateway.transport.publish(f"{self.prefix}/{op}", payload)
                outcome, doc = await waiter
        except PublishError as exc:
            raise _RetryError(f"{op} not delivered: {exc}") from exc
        except TimeoutError:
            raise _RetryError(f"no answer to {op} within {self.settings.request_timeout_s:.0f} s") from None
        finally:
            self._answers.pop(token, None)
        if outcome == "accepted":
            return doc
        code, message = doc.get("code"), doc.get("message")
        if code in _RETRYABLE_CODES:
            raise _RetryError(f"{op} refused with {code} {message}")
        raise _RejectedError(int(code) if isinstance(code, int) else 0, str(message))

    async def _sync(self) -> None:
        if self._unsent is not None:
            await self._send(*self._unsent)
        try:
            doc = await self._request("get", {})
        except _RejectedError as exc:
            if exc.code != _NOT_FOUND:
                raise _RetryError(f"get refused with {exc.code} {exc.message}") from exc
            doc = {}  # no shadow yet: nothing desired
        state = doc.get("state") if isinstance(doc.get("state"), dict) else {}
        desired = state.get("desired", {}) if state else {}
        version = doc.get("version") if isinstance(doc.get("version"), int) else None
        key = canonical(desired)
        if key == self._handled or sha256(desired) == self._rolled_back:
            if self.last_status is None:  # first contact since start: say what runs
                await self._report(self._outcome("applied", self._applied.version if self._applied else None))
            return
        await self._handle(desired, version, key)
        if self._unsent is not None:  # a report that could not go out while the change was judged
            msg = f"report of {self._unsent[0]['status']} not delivered yet"
            raise _RetryError(msg)

    async def _handle(self, desired: Any, version: int | None, key: bytes) -> None:  # noqa: ANN401 - raw JSON
        try:
            new = effective_config(self.gateway.local, desired)
        except ConfigError as exc:
            errors = [{"path": e.path, "message": e.message} for e in exc.errors]
            _log.error(
                "shadow %s: desired version %s rejected, the running config is unchanged: %s",
                self.settings.name,
                version,
                "; ".join(str(e) for e in exc.errors),
            )
            await self._reject(desired, version, key, errors, offending=offending_values(desired, errors))
            return
        refusal = None if diff(self.gateway.config, new).empty else await self._audit_refusal()
        if refusal is not None:
            _log.error("shadow %s: desired version %s refused: %s", self.settings.name, version, refusal)
            await self._reject(desired, version, key, [{"path": "(audit)", "message": refusal}])
            return
        previous, previous_mirror = self.gateway.config, self._mirror
        before = snapshot(self.gateway.publishers)
        change = await self.gateway.apply(new)
        self._handled = key
        _log.info(
            "shadow %s: %s applied (%s)",
            self.settings.name,
            "no shadow yet, the local config" if version is None else f"desired version {version}",
            change.describe(),
        )
        applied = {**self._outcome("applied", version), "changes": change.describe()}
        with contextlib.suppress(_RetryError):  # the change may have cut the connection: judged below
            await self._report(applied, mirror=desired)
        problem = (
            None if change.empty else await probation(self.gateway, change, before, self.settings.confirm_window_s)
        )
        if (
            problem is None
            and not change.empty
            and not await self._audit(CONFIG_APPLIED, new, version, before=previous)
        ):
            audit = self.gateway.audit  # fail closed: a change in effect is a change on the record
            problem = _audit_message(audit.write_error if audit is not None else None)
        if problem is None:
            self._applied = AppliedConfig(version or 0, desired, config_hash(new))
            await asyncio.to_thread(self._applied.save, self.path)
            return
        _log.error("shadow %s: rolling back desired version %s: %s", self.settings.name, version, problem)
        await self.gateway.apply(previous)
        self._rolled_back = sha256(desired)
        kept = self._applied or AppliedConfig(0, {}, config_hash(previous))
        self._applied = AppliedConfig(kept.version, kept.desired, kept.config_hash, rolled_back=self._rolled_back)
        await asyncio.to_thread(self._applied.save, self.path)
        rolled_back = {**self._outcome("rolled_back", version), "reason": problem}
        try:  # as for a rejection: recorded even when the report must wait for a later sync
            await self._report(rolled_back, mirror=previous_mirror)
        finally:
            await self._audit(CONFIG_ROLLED_BACK, new, version, before=previous, reason=problem)

    async def _reject(
        self,
        desired: Any,  # noqa: ANN401 - raw JSON
        version: int | None,
        key: bytes,
        errors: list[dict[str, str]],
        *,
        offending: list[dict[str, Any]] | None = None,
    ) -> None:
        """Report and record a refusal; the running config is untouched."""
        self._handled = key
        try:  # a report that does not get through is sent again later; the outcome is final now
            await self._report({**self._outcome("rejected", version), "errors": errors})
        finally:
            await self._audit(
                CONFIG_REJECTED,
                None,
                version,
                desired_hash=sha256(desired),
                changed=changed_paths(self._mirror, desired),
                values=changed_values(self._mirror, desired),
                reasons=errors,
                offending=offending,
            )

    async def _audit_refusal(self) -> str | None:
        """Why no change may be applied now because the audit trail cannot be written; None if it can."""
        audit = self.gateway.audit
        if audit is None:
            error = self.gateway.audit_error
            return None if error is None else _audit_message(error)
        try:
            await audit.check_writable()
        except AuditError as exc:
            return _audit_message(str(exc))
        return None

    async def _audit(
        self,
        event: str,
        after: GatewayConfig | None,
        version: int | None,
        *,
        before: GatewayConfig | None = None,
        **fields: Any,  # noqa: ANN401 - the event's own fields
    ) -> bool:
        """One final outcome into the audit trail (gxp/recorder.py), when the gateway keeps one; False if
        it could not be written."""
        audit = self.gateway.audit
        if audit is None:
            return self.gateway.audit_error is None
        return await audit.config_event(
            event,
            before=before or self.gateway.config,
            after=after,
            shadow_version=version,
            client_token=self.last_token,
            **fields,
        )

    def _outcome(self, status: str, version: int | None) -> dict[str, Any]:
        return {
            "status": status,
            "version": version,
            "config_hash": config_hash(self.gateway.config),
            "errors": [],
            "at": round(time.time(), 3),
        }

    async def _report(self, config_status: dict[str, Any], *, mirror: dict[str, Any] | None = None) -> None:
        """Report now; one that cannot be delivered is kept and sent first at the next sync."""
        self.last_status = config_status
        self._unsent = (config_status, mirror)
        await self._send(config_status, mirror)

    async def _send(self, config_status: dict[str, Any], mirror: dict[str, Any] | None) -> None:
        reported: dict[str, Any] = {} if mirror is None else removed_as_null(self._mirror, mirror)
        reported["config_status"] = removed_as_null(self._sent_status, config_status)
        try:
            await self._request("update", {"state": {"reported": reported}})
        except _RejectedError as exc:
            # 413 (the mirror made the document too big) or 400: say so without the mirror; no loop.
            _log.error("shadow %s: report refused (%d %s)", self.settings.name, exc.code, exc.message)
            refused = {"path": "(report)", "message": f"{exc.code} {exc.message}"}
            small = {**config_status, "errors": [*config_status["errors"], refused]}
            with contextlib.suppress(_RejectedError):
                await self._request("update", {"state": {"reported": {"config_status": small}}})
                self._sent_status = small
        else:
            self._sent_status = config_status
            if mirror is not None:
                self._mirror = mirror
        self._unsent = None


def _audit_message(error: str | None) -> str:
    return (
        f"the audit trail cannot be written: {error or 'unknown error'}. No configuration change is applied "
        "while it cannot (data collection goes on); repair it (edge-gateway audit verify, docs/gxp.md), restart "
        "the gateway or send the change again"
    )


class _RetryError(GatewayError):
    """The request did not get through or the service was busy (429, 500, 503): ask again later."""

    retryable = True


class _RejectedError(GatewayError):
    """The shadow service refused the request for good (e.g. 400, 413): asking again will not help."""

    retryable = False

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
