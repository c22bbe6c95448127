"""Command line: ``edge-gateway run|validate|schema|status|audit|iq|browse`` (also ``python -m edge_gateway``).

Exit codes: 0 ok, 1 runtime failure, 2 invalid configuration or usage.
The CLI is the only place that configures logging handlers and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_gateway import __version__
from edge_gateway.config.model import GatewayConfig, load_config
from edge_gateway.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from edge_gateway.config.files import FileProblems

_log = logging.getLogger("edge_gateway")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Library chatter (asyncua logs every reconnect attempt at WARNING) stays out of the operator's log.
    for noisy in ("asyncua", "pymodbus"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _load(path: Path) -> GatewayConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    if args.desired is not None:
        return _validate_desired(config, args.config, args.desired)
    from edge_gateway.config.files import check_files  # noqa: PLC0415 - reads certificates: not for every command

    problems = check_files(config).all
    if problems:
        print(ConfigError(f"{args.config} (the files it names)", problems), file=sys.stderr)
        return EXIT_CONFIG
    sources = f"{len(config.sources)} source(s)" if config.sources else "no sources"
    print(
        f"{args.config}: valid ({sources}, {len(config.publisher.destinations)} destination(s), "
        f"thing {config.gateway.thing_name})"
    )
    if not config.sources:
        print(_no_sources(config))
    return EXIT_OK


def _no_sources(config: GatewayConfig) -> str:
    """What a configuration without sources does, and what it lacks to take its sources from the shadow."""
    shadow = config.shadow
    if not shadow.enabled:
        return "no sources configured and shadow.enabled is false: the gateway would collect nothing; add sources"
    start = (
        "no sources configured: the gateway starts, connects and heartbeats, and collects once the device shadow "
        f"{shadow.name!r} gives it sources"
    )
    if shadow.allowed_source_hosts is None:
        return (
            f"{start}; but shadow.allowed_source_hosts is not set, and with no sources in the file no host is "
            "allowed: set it to the PLCs' hosts or networks (docs/configuration.md, 'Device shadow')"
        )
    return f"{start} on {', '.join(shadow.allowed_source_hosts) or 'no host (allowed_source_hosts is empty)'}"


def _validate_desired(local: GatewayConfig, config_path: Path, path: Path) -> int:
    """Judge a desired document as the running gateway would (control/desired.py's ``effective_config``): the
    file holds the desired state itself, or a whole shadow update request (``{"state": {"desired": ...}}``)."""
    from edge_gateway.config.diff import diff  # noqa: PLC0415 - only with --desired
    from edge_gateway.control.desired import effective_config  # noqa: PLC0415
    from edge_gateway.util.jsondoc import loads  # noqa: PLC0415

    try:
        doc = loads(path.read_bytes())
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError too
        print(f"{path}: not valid JSON ({exc}); a desired document is the JSON the shadow would hold", file=sys.stderr)
        return EXIT_CONFIG
    if isinstance(doc, dict) and set(doc) <= {"state", "clientToken", "version"} and isinstance(doc.get("state"), dict):
        doc = doc["state"].get("desired", {})  # the update request an operator would send
    try:
        new = effective_config(local, doc)
    except ConfigError as exc:
        print(f"{path}: the gateway would reject it against {config_path}:", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{path}: accepted against {config_path}: {diff(local, new).describe()}")
    return EXIT_OK


def _load_greengrass(path: Path | None) -> GatewayConfig | None:
    from edge_gateway.config import greengrass  # noqa: PLC0415 - only under Greengrass

    try:
        config, notes = greengrass.load(os.environ, path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
    for note in notes:
        _log.log(note.level, "greengrass: %s", note.message)
    return config


def _run_config(args: argparse.Namespace) -> GatewayConfig | None:
    """The config ``run`` starts from (the file, or Greengrass's), None after printing why there is none."""
    if args.greengrass:
        config = _load_greengrass(args.config)
    elif args.config is None:
        print("run needs --config FILE (or --greengrass, as the Greengrass component runs it)", file=sys.stderr)
        return None
    else:
        config = _load(args.config)
    if config is not None and config.publisher.mqtt.ipc:
        from edge_gateway.config import greengrass  # noqa: PLC0415 - only in IPC mode

        try:
            greengrass.ipc_environment(os.environ)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return None
    return config


def cmd_run(args: argparse.Namespace) -> int:
    config = _run_config(args)
    if config is None:
        return EXIT_CONFIG
    from edge_gateway.config.files import check_files, storage_errors  # noqa: PLC0415 - keep `validate` light
    from edge_gateway.control.desired import AppliedConfig, boot_config  # noqa: PLC0415
    from edge_gateway.runtime.supervisor import Gateway  # noqa: PLC0415

    origin = args.config or "the Greengrass configuration"
    # Where the data lives is local only (a shadow cannot move it): checked before the saved state is read.
    if storage := storage_errors(config):
        error = ConfigError(f"{origin} (where the gateway keeps its data)", storage)
        print(f"{error}\nnothing can be collected: fix this and start again", file=sys.stderr)
        return EXIT_CONFIG
    # A gateway that boots with no network runs the last config the shadow gave it, on top of the file.
    saved = AppliedConfig.load(config.shadow_state_path) if config.shadow.enabled else None
    effective, applied = boot_config(config, saved)
    if applied is not None:
        _log.info("running the saved shadow config (version %d) on top of %s", applied.version, origin)
    _log_file_problems(effective, check_files(effective))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Gateway(effective, local=config, applied=applied).run(stop)

    try:
        asyncio.run(main())
    except (OSError, StorageError) as exc:  # a file or disk the checks above could not foresee: one clear line
        _log.error("gateway stopped: %s (run with --log-level debug for the traceback)", exc)
        _log.debug("gateway stopped", exc_info=True)
        return EXIT_FAILED
    except Exception:  # noqa: BLE001 - last line of defence: log it with its traceback, exit non-zero
        _log.exception("gateway failed")
        return EXIT_FAILED
    return EXIT_OK


def _log_file_problems(config: GatewayConfig, problems: FileProblems) -> None:
    """Before starting: a cloud-side file problem the transport cannot see by itself (a certificate out of date,
    a CA that did not sign it: awscrt builds its client and only the TLS handshake fails) in one line; what the
    transport does see (missing, not PEM, key mismatch) it logs itself, once, and retries until the files are
    fixed; collection goes on either way. A source's own problems once per source (that source retries)."""
    if problems.handshake:
        _log.error(
            "the cloud connection cannot work until its files are fixed; collecting into the buffer and retrying "
            "meanwhile: %s",
            "; ".join(str(e) for e in problems.handshake),
        )
    for name, errors in problems.sources.items():
        _log.warning("source %s: %s (it retries until fixed)", name, "; ".join(str(e) for e in errors))
    if not config.sources:
        _log.info("%s", _no_sources(config))


def _show_status(doc: dict[str, Any], *, as_json: bool, heartbeat: bool) -> str:
    from edge_gateway.observe.status import render  # noqa: PLC0415

    if as_json:
        return json.dumps(doc, indent=2)
    status = doc["status"] if heartbeat else doc
    shown = render(status)
    if not status.get("sources"):
        shown += "\n\nno sources configured: the gateway collects once the device shadow gives it sources"
    if not heartbeat:
        return shown
    sent = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(doc["time"]))
    return f"last heartbeat acknowledged by the broker, sent {sent} ({doc['state']})\n{shown}"


def cmd_status(args: argparse.Namespace) -> int:
    path: Path = args.file
    if path is None:
        config = _load(args.config) if args.config else None
        if config is None:
            print("status needs --file STATUS.json or a valid --config FILE", file=sys.stderr)
            return EXIT_CONFIG
        path = config.last_heartbeat_path if args.last_heartbeat else config.status_path
    while True:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            what = "heartbeat acknowledged yet" if args.last_heartbeat else "status"
            print(f"no {what} at {path} ({exc}); is the gateway running?", file=sys.stderr)
            if not args.watch:
                return EXIT_FAILED
        else:
            if args.watch and not args.json:
                print("\033[2J\033[H", end="")
            print(_show_status(doc, as_json=args.json, heartbeat=args.last_heartbeat), flush=True)
        if not args.watch:
            return EXIT_OK
        time.sleep(args.interval)


def cmd_schema(_args: argparse.Namespace) -> int:
    from edge_gateway.control.desired import shadow_schema  # noqa: PLC0415

    print(json.dumps(shadow_schema(), indent=2))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-gateway", description="Industrial edge gateway to AWS IoT")
    parser.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway")
    run.add_argument("--config", type=Path, help="config file (YAML or JSON); required without --greengrass")
    run.add_argument(
        "--greengrass",
        action="store_true",
        help="run as the Greengrass component: the thing name, root CA, work directory and component "
        "configuration come from the environment the nucleus and recipe.yaml set (docs/deployment.md)",
    )
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a config file; print every error with its field path")
    validate.add_argument("--config", type=Path, required=True)
    validate.add_argument(
        "--desired",
        type=Path,
        help="also check a shadow desired document (JSON) against the config as the running gateway would: "
        "every error with its path and exit 2 when it would be rejected, else what would change",
    )
    validate.set_defaults(func=cmd_validate)

    schema = sub.add_parser("schema", help="print the JSON Schema of the device shadow's desired document")
    schema.set_defaults(func=cmd_schema)

    status = sub.add_parser("status", help="show the running gateway's status")
    status.add_argument("--config", type=Path, help="the gateway's config (to find its status file)")
    status.add_argument("--file", type=Path, help="the status file itself")
    status.add_argument("--watch", action="store_true", help="refresh until interrupted")
    status.add_argument("--interval", type=float, default=1.0)
    status.add_argument("--json", action="store_true", help="print the raw JSON document")
    status.add_argument(
        "--last-heartbeat",
        action="store_true",
        help="show the last heartbeat the broker acknowledged (as sent) instead of the live status",
    )
    status.set_defaults(func=cmd_status)

    from edge_gateway.gxp.cli import add_audit_arguments, add_iq_arguments, run_audit, run_iq  # noqa: PLC0415

    audit = sub.add_parser("audit", help="verify or show the GxP audit trail (docs/gxp.md)")
    add_audit_arguments(audit)
    audit.set_defaults(func=run_audit)
    iq = sub.add_parser("iq", help="Installation Qualification: compare this installation with a SPEC (docs/gxp.md)")
    add_iq_arguments(iq)
    iq.set_defaults(func=run_iq)

    from edge_gateway.sources.opcua import browse as opcua_browse  # noqa: PLC0415

    browse = sub.add_parser("browse", help="walk an OPC UA server and print its variables as a config snippet")
    opcua_browse.add_arguments(browse)
    browse.set_defaults(func=opcua_browse.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_format)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_OK
