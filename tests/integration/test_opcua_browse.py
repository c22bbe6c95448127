"""``edge-gateway browse`` (edge_gateway/sources/opcua/browse.py) against the simulator in a separate
process: the snippet it prints is a valid source config that delivers data when fed back."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_gateway.sources.opcua.config import OpcUaSource
from edge_gateway.sources.opcua.reader import OpcUaReader
from simulators.opcua_plc import TAGS
from simulators.opcua_process import OpcUaSimProcess
from simulators.ports import free_port
from tests.integration.test_opcua_source import assert_consecutive
from tests.support import Collected


def browse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_gateway.sources.opcua.browse", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_browse_output_fed_back_as_config_delivers_data(running_opcua_sim: OpcUaSimProcess) -> None:
    done = await asyncio.to_thread(browse, running_opcua_sim.endpoint, "--depth", "2", "--name", "press")
    assert done.returncode == 0, done.stderr
    doc = yaml.safe_load(done.stdout)
    entry = doc["sources"][0]
    nodes = {n["alias"]: n["node_id"] for n in entry["nodes"]}
    for tag in TAGS:
        assert nodes[f"line1.{tag.lower()}"] == f"nsu=urn:edge-gateway:sim:opcua;s=Line1.{tag}"
    assert "# UInt32" in done.stdout  # data types as comments

    config = OpcUaSource.model_validate(entry | {"publishing_interval_ms": 50, "reconnect_min_s": 0.2})
    sink = Collected()
    task = asyncio.create_task(OpcUaReader(config).run(sink))
    try:
        await sink.wait(lambda: len(sink.values("line1.counter")) >= 5, 10, "counter values from the browsed config")
        assert_consecutive(sink.values("line1.counter"), "counter")
        assert sink.values("line1.state")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_browse_reports_usage_and_unreachable_servers() -> None:
    bad = await asyncio.to_thread(browse, "http://nope")
    assert bad.returncode == 2
    assert "opc.tcp://" in bad.stderr
    down = await asyncio.to_thread(browse, f"opc.tcp://127.0.0.1:{free_port()}", "--timeout-s", "2")
    assert down.returncode == 1
    assert down.stderr.startswith("browse opc.tcp://127.0.0.1:")


async def test_browse_over_a_secured_channel_checks_the_trust_list(tmp_path: Path) -> None:
    secure = OpcUaSimProcess(free_port(), "--pki", str(tmp_path / "server"))
    await asyncio.to_thread(secure.start)
    try:
        args = [secure.endpoint, "--depth", "2", "--security", "Aes128_Sha256_RsaOaep,SignAndEncrypt"]
        args += ["--cert-dir", str(tmp_path / "pki")]
        refused = await asyncio.to_thread(browse, *args)
        assert refused.returncode == 1
        assert f"refused the server certificate of {secure.endpoint}" in refused.stderr
        assert refused.stdout == ""

        trusted = await asyncio.to_thread(browse, *args, "--trust-on-first-use")
        assert trusted.returncode == 0, trusted.stderr
        entry = yaml.safe_load(trusted.stdout)["sources"][0]
        assert entry["security"] == {
            "mode": "SignAndEncrypt",
            "policy": "Aes128_Sha256_RsaOaep",
            "cert_dir": str(tmp_path / "pki"),
        }
        # The snippet is a valid source as printed.
        assert OpcUaSource.model_validate(entry).security.mode == "SignAndEncrypt"
    finally:
        await asyncio.to_thread(secure.stop)
