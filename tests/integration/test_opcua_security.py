"""OpcUaReader against the simulator with secured endpoints, in a separate process: SignAndEncrypt with a
user, the trust list (refused, first-use trust), a wrong password, the client certificate kept."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_gateway.model import Quality
from edge_gateway.sources.base import SourceState
from edge_gateway.sources.opcua.config import OpcUaSource
from edge_gateway.sources.opcua.reader import OpcUaReader
from simulators.opcua_plc import node_id
from simulators.opcua_process import OpcUaSimProcess
from simulators.ports import free_port
from tests.integration.test_opcua_source import assert_consecutive
from tests.support import Collected

PASSWORD = "s3cret-Pa55"  # noqa: S105 - the simulator's test user


@pytest.fixture(scope="module")
def secure_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OpcUaSimProcess, Path]]:
    pki = tmp_path_factory.mktemp("server-pki")
    sim = OpcUaSimProcess(free_port(), "--pki", str(pki), "--user", f"operator:{PASSWORD}")
    sim.start()
    yield sim, pki
    sim.stop()


def secure_config(endpoint: str, tmp: Path, password: str = PASSWORD, **security: Any) -> OpcUaSource:
    password_file = tmp / "opcua.password"
    password_file.write_text(password + "\n")
    return OpcUaSource.model_validate(
        {
            "type": "opcua",
            "name": "plc",
            "endpoint": endpoint,
            "publishing_interval_ms": 50,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            "timeout_s": 3.0,
            "security": {"mode": "SignAndEncrypt", "policy": "Aes256_Sha256_RsaPss", "cert_dir": str(tmp / "pki")}
            | security,
            "auth": {"username": "operator", "password_file": str(password_file)},
            "nodes": [{"alias": "plc.counter", "node_id": node_id("Counter")}],
        }
    )


def trust(server_pki: Path, client_dir: Path) -> None:
    (client_dir / "pki" / "trusted").mkdir(parents=True, exist_ok=True)
    shutil.copy(server_pki / "server_cert.der", client_dir / "pki" / "trusted" / "plc.der")


@pytest.mark.parametrize(
    ("mode", "policy"),
    [
        ("SignAndEncrypt", "Aes256_Sha256_RsaPss"),
        ("SignAndEncrypt", "Aes128_Sha256_RsaOaep"),
        ("Sign", "Basic256Sha256"),
    ],
)
async def test_secured_session_with_a_user_delivers_data_and_keeps_its_certificate(  # noqa: PLR0917
    secure_sim: tuple[OpcUaSimProcess, Path],
    tmp_path: Path,
    run_reader: Callable[[OpcUaReader, Collected], asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
    mode: str,
    policy: str,
) -> None:
    caplog.set_level(logging.INFO)  # asyncua's DEBUG dumps whole requests: never on in production
    sim, server_pki = secure_sim
    trust(server_pki, tmp_path)
    config = secure_config(sim.endpoint, tmp_path, mode=mode, policy=policy)
    sink = Collected()
    task = run_reader(OpcUaReader(config), sink)
    await sink.wait(lambda: len(sink.values("plc.counter")) >= 10, 15, "counter values over the secured session")
    assert_consecutive(sink.values("plc.counter"), "counter")
    cert = (tmp_path / "pki" / "client_cert.der").read_bytes()
    assert (tmp_path / "pki" / "client_key.pem").stat().st_mode & 0o077 == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # A second reader (a gateway restart) uses the same certificate, not a new one.
    sink2 = Collected()
    run_reader(OpcUaReader(config), sink2)
    await sink2.wait(lambda: len(sink2.values("plc.counter")) >= 3, 15, "counter values after a restart")
    assert (tmp_path / "pki" / "client_cert.der").read_bytes() == cert
    assert PASSWORD not in caplog.text


async def test_a_server_certificate_not_in_the_trust_list_is_refused_and_first_use_trust_is_opt_in(
    secure_sim: tuple[OpcUaSimProcess, Path],
    tmp_path: Path,
    run_reader: Callable[[OpcUaReader, Collected], asyncio.Task[None]],
) -> None:
    sim, server_pki = secure_sim
    sink = Collected()
    reader = OpcUaReader(secure_config(sim.endpoint, tmp_path))
    run_reader(reader, sink)
    await sink.wait(lambda: reader.status.reconnects >= 2, 10, "refused connection attempts")
    assert reader.status.state is SourceState.RECONNECTING
    assert sink.readings == []
    message = reader.status.last_error or ""
    assert f"refused the server certificate of {sim.endpoint}" in message
    assert "it is not in the trust list" in message
    assert "urn:edge-gateway:sim:opcua:server" in message
    rejected = next((tmp_path / "pki" / "rejected").iterdir())
    assert rejected.read_bytes() == (server_pki / "server_cert.der").read_bytes()
    assert f"copy {rejected} into {tmp_path / 'pki' / 'trusted'}" in message

    # trust_on_first_use: trusted and saved, then data flows.
    tofu = tmp_path / "tofu"
    tofu.mkdir()
    sink2 = Collected()
    run_reader(OpcUaReader(secure_config(sim.endpoint, tofu, trust_on_first_use=True)), sink2)
    await sink2.wait(lambda: len(sink2.values("plc.counter")) >= 3, 15, "counter values after first-use trust")
    saved = list((tofu / "pki" / "trusted").iterdir())
    assert [p.read_bytes() for p in saved] == [(server_pki / "server_cert.der").read_bytes()]

    # A different certificate for a trusted application URI is still refused, first-use trust or not.
    other_pki = tmp_path / "other-server"
    impostor = OpcUaSimProcess(free_port(), "--pki", str(other_pki), "--user", f"operator:{PASSWORD}")
    impostor.start()
    try:
        sink3 = Collected()
        reader3 = OpcUaReader(secure_config(impostor.endpoint, tofu, trust_on_first_use=True))
        run_reader(reader3, sink3)
        await sink3.wait(lambda: reader3.status.reconnects >= 1, 10, "refused impostor")
        assert "a different certificate is already trusted for this application URI" in (
            reader3.status.last_error or ""
        )
        assert sink3.readings == []
    finally:
        impostor.stop()


async def test_a_wrong_password_is_reported_clearly_and_retried_with_backoff(
    secure_sim: tuple[OpcUaSimProcess, Path],
    tmp_path: Path,
    run_reader: Callable[[OpcUaReader, Collected], asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)  # asyncua's DEBUG dumps whole requests: never on in production
    sim, server_pki = secure_sim
    trust(server_pki, tmp_path)
    sink = Collected()
    reader = OpcUaReader(secure_config(sim.endpoint, tmp_path, password="wrong-password"))  # noqa: S106
    run_reader(reader, sink)
    await sink.wait(lambda: reader.status.reconnects >= 2, 10, "refused logins")
    message = reader.status.last_error or ""
    assert "BadUserAccessDenied" in message
    assert f"the server refused user 'operator': check auth.username and the password file {tmp_path}" in message
    # Backoff, not a tight loop: 0.2 s .. 1 s apart.
    await asyncio.sleep(2.0)
    assert 2 <= reader.status.reconnects <= 14
    assert sink.readings == [] or all(r.quality is Quality.BAD for r in sink.readings)
    assert "wrong-password" not in caplog.text
    assert "wrong-password" not in message
