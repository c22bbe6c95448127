"""What makes the asyncua ``Server`` behave like a real PLC rather than a library default: secured
endpoints with a self-signed server certificate and, optionally, one required user; operation limits
that are both advertised and enforced; and subscriptions that keep publishing after a transfer.

Each function changes one ``Server`` in place and is called once by ``OpcUaPlc`` while it starts
(``secure`` before ``start()``, the others after it); none keeps state of its own.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from cryptography.x509.oid import ExtendedKeyUsageOID

APPLICATION_URI = "urn:edge-gateway:sim:opcua:server"
SECURE_POLICIES = [
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
]


class _Users:
    """asyncua user manager: only the configured user, never anonymous."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(
        self, _iserver: object, username: str | None = None, password: str | None = None, certificate: object = None
    ) -> User | None:
        del certificate
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


def fix_transfer(server: Server) -> None:
    """asyncua 2.1's TransferSubscriptions hands the subscription's publish *responses* to the new
    session but keeps taking publish *requests* from the old, dead one, so a transferred subscription
    never publishes again. Real servers move both; so does the simulator."""
    subs = server.iserver.subscription_service
    transfer = subs.transfer_subscriptions

    async def transfer_both(
        params: ua.TransferSubscriptionsParameters, session_id: ua.NodeId, callback: Callable[..., Any]
    ) -> list[ua.TransferResult]:
        results = await transfer(params, session_id, callback)
        processor = getattr(callback, "__self__", None)
        for sub_id, result in zip(params.SubscriptionIds, results, strict=True):
            sub = subs.subscriptions.get(int(sub_id))
            if sub is not None and processor is not None and result.StatusCode.is_good():
                sub.pub_request_callback = processor.get_publish_request
        return results

    subs.transfer_subscriptions = transfer_both  # type: ignore[method-assign]


def enforce_limits(server: Server, limit: int) -> None:
    """Advertised limits are also enforced, so a client that ignores them fails here as on a PLC."""
    if not limit:
        return
    subs = server.iserver.subscription_service
    create = subs.create_monitored_items
    attributes = server.iserver.attribute_service
    read = attributes.read

    async def limited_create(params: ua.CreateMonitoredItemsParameters) -> list[ua.MonitoredItemCreateResult]:
        if len(params.ItemsToCreate) > limit:
            raise ServiceError(StatusCodes.BadTooManyOperations)
        return await create(params)

    def limited_read(params: ua.ReadParameters) -> list[ua.DataValue]:
        if len(params.NodesToRead) > limit:
            raise ServiceError(StatusCodes.BadTooManyOperations)
        return read(params)

    subs.create_monitored_items = limited_create  # type: ignore[method-assign]
    attributes.read = limited_read  # type: ignore[method-assign]


async def set_limits(server: Server, limit: int) -> None:
    """Advertise ``limit`` (0: none) as the server's operation limits."""
    if not limit:
        return
    for oid in (
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRegisterNodes,
        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
    ):
        await server.write_attribute_value(
            ua.NodeId(ua.Int32(oid)), ua.DataValue(ua.Variant(limit, ua.VariantType.UInt32))
        )


async def secure(server: Server, pki: Path | None, users: dict[str, str]) -> None:
    """No security without ``pki``; else also the secured endpoints, requiring ``users`` when given."""
    if pki is None:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        return
    pki.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before the server serves anyone
    key, cert = pki / "server_key.pem", pki / "server_cert.der"
    await cert_gen.setup_self_signed_certificate(
        key, cert, APPLICATION_URI, socket.gethostname(), [ExtendedKeyUsageOID.SERVER_AUTH], {}
    )
    await server.set_application_uri(APPLICATION_URI)
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity, *SECURE_POLICIES])
    if users:
        server.iserver.user_manager = _Users(users)  # type: ignore[assignment]
        server.set_identity_tokens([ua.UserNameIdentityToken])
