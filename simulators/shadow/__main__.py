"""The command line of the Device Shadow service stand-in (``simulators.shadow``): serve, get, set, delete.

Usage (beside ``make demo``, which starts ``serve`` itself and keeps its broker config and test PKI in
``var/demo``)::

    python -m simulators.shadow serve [--dir var/demo]
    python -m simulators.shadow set --thing demo-gateway --name config --desired '{"a": 1}'
    python -m simulators.shadow set --thing demo-gateway --name config --file desired.json [--version 3]
    python -m simulators.shadow get|delete --thing demo-gateway --name config

The port comes from ``<dir>/broker/mosquitto.conf`` (or ``--port``); client certificates ``shadow-service``
and ``shadow-cli`` are added to ``<dir>/pki`` (or ``--pki``) when missing.

Exit status: 0 for an accepted answer (or a
``serve`` stopped by SIGINT/SIGTERM), 1 for a rejected one, 2 when no answer came in time or the arguments,
PKI or broker are wrong (the reason on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import signal
import sys
import uuid
from pathlib import Path

from edge_gateway.config.model import MqttSettings
from edge_gateway.errors import PublishError
from edge_gateway.publish.transport.mqtt import MqttTransport
from simulators.pki import add_client
from simulators.shadow.document import DEFAULT_MAX_DOCUMENT_BYTES, ShadowKey
from simulators.shadow.service import ShadowCaller, ShadowService


def broker_port(config: Path) -> int:
    """The listener port of a broker that MosquittoBroker configured (``make demo`` writes var/demo/broker)."""
    try:
        text = config.read_text()
    except OSError as exc:
        msg = f"cannot read {config} ({exc.strerror}): is `make demo` running? Otherwise pass --port"
        raise FileNotFoundError(msg) from exc
    found = re.search(r"^listener\s+(\d+)", text, re.MULTILINE)
    if found is None:
        msg = f"no `listener PORT` line in {config}: pass --port"
        raise ValueError(msg)
    return int(found.group(1))


def client_settings(args: argparse.Namespace, client: str) -> MqttSettings:
    """Broker and certificate for ``client``: its certificate is signed by the demo CA when missing."""
    pki: Path = args.pki or args.dir / "pki"
    if not (pki / "ca.key").exists():
        msg = f"no test PKI in {pki}: start `make demo` first, or pass --pki (a directory made by generate_pki)"
        raise FileNotFoundError(msg)
    if not (pki / f"{client}.pem").exists():
        add_client(pki, client)
    return MqttSettings(
        endpoint=args.endpoint,
        port=args.port or broker_port(args.dir / "broker" / "mosquitto.conf"),
        ca_file=pki / "ca.pem",
        cert_file=pki / f"{client}.pem",
        key_file=pki / f"{client}.key",
        keep_alive_s=10,
        ping_timeout_ms=2000,
        ack_timeout_s=5,
        reconnect_min_s=0.2,
        reconnect_max_s=2.0,
        iot_core_flow_control=False,
    )


async def _cli_serve(args: argparse.Namespace) -> int:
    settings = client_settings(args, args.cert_name or "shadow-service")
    service = ShadowService(
        settings, max_document_bytes=args.max_document_bytes, rate_limit_per_s=args.rate_limit_per_s
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with service:
        print(
            f"READY shadow service on mqtts://{settings.endpoint}:{settings.port}"
            f" as {settings.cert_file.stem if settings.cert_file else '?'}",
            flush=True,
        )
        await stop.wait()
    return 0


def _json_option(text: str, option: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        msg = f"{option} is not JSON: {exc}"
        raise ValueError(msg) from None


def _request_payload(args: argparse.Namespace) -> dict[str, object]:
    if args.operation != "update":
        return {"clientToken": args.client_token} if args.client_token else {}
    state: dict[str, object] = {}
    if args.file is not None:
        text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text()
        state["desired"] = _json_option(text, f"--file {args.file}")
    if args.desired is not None:
        state["desired"] = _json_option(args.desired, "--desired")
    if args.reported is not None:
        state["reported"] = _json_option(args.reported, "--reported")
    request: dict[str, object] = {"state": state}
    if args.version is not None:
        request["version"] = args.version
    if args.client_token:
        request["clientToken"] = args.client_token
    return request


async def _cli_call(args: argparse.Namespace) -> int:
    request = _request_payload(args)
    settings = client_settings(args, args.cert_name or "shadow-cli")
    transport = MqttTransport(settings, f"shadow-cli-{uuid.uuid4().hex[:8]}")
    await transport.start()
    key = ShadowKey(args.thing, args.name)
    try:
        await transport.wait_connected(args.timeout)
        accepted, answer = await ShadowCaller(transport).request(key, args.operation, request, timeout_s=args.timeout)
    except TimeoutError:
        print(
            f"no answer on {key.topic_prefix}/{args.operation}/accepted|rejected within {args.timeout} s: "
            "is `python -m simulators.shadow serve` running?",
            file=sys.stderr,
        )
        return 2
    finally:
        await transport.stop()
    print(f"{key.topic_prefix}/{args.operation}/{'accepted' if accepted else 'rejected'}", file=sys.stderr)
    print(json.dumps(answer, indent=2))
    return 0 if accepted else 1


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=Path("var/demo"), help="the demo's directory (default var/demo)")
    common.add_argument("--pki", type=Path, help="test PKI directory (default DIR/pki)")
    common.add_argument("--endpoint", default="127.0.0.1")
    common.add_argument("--port", type=int, help="broker port (default: read from DIR/broker/mosquitto.conf)")
    common.add_argument("--cert-name", help="client certificate in the PKI (default shadow-service / shadow-cli)")
    parser = argparse.ArgumentParser(
        prog="python -m simulators.shadow", description="AWS IoT Device Shadow service stand-in on the local broker"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", parents=[common], help="run the shadow service until Ctrl-C")
    serve.add_argument("--max-document-bytes", type=int, default=DEFAULT_MAX_DOCUMENT_BYTES)
    serve.add_argument("--rate-limit-per-s", type=float, help="answer 429 above this many requests/s per shadow")
    for command, text in (
        ("get", "print a shadow"),
        ("set", "update a shadow (desired by default) and print the answer"),
        ("delete", "delete a shadow"),
    ):
        sub = commands.add_parser(command, parents=[common], help=text)
        sub.add_argument("--thing", default="demo-gateway")
        sub.add_argument("--name", help="named shadow (default: the classic shadow)")
        sub.add_argument("--client-token")
        sub.add_argument("--timeout", type=float, default=10.0)
        if command == "set":
            sub.add_argument("--desired", help="desired state as JSON (null values delete keys)")
            sub.add_argument("--reported", help="reported state as JSON")
            sub.add_argument("--file", type=Path, help="desired state from a JSON file ('-': stdin)")
            sub.add_argument("--version", type=int, help="only if the shadow is at this version (else 409)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "set" and args.desired is None and args.reported is None and args.file is None:
        print("set needs --desired, --reported or --file", file=sys.stderr)
        return 2
    args.operation = {"get": "get", "set": "update", "delete": "delete"}.get(args.command)
    logging.basicConfig(
        level=logging.INFO if args.command == "serve" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(_cli_serve(args) if args.command == "serve" else _cli_call(args))
    except (OSError, ValueError, PublishError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
