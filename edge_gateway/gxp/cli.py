"""``edge-gateway audit verify|show`` and ``edge-gateway iq``: argument setup and command bodies.

Exit codes: 0 ok / pass, 1 failure (broken chain, unreadable trail, IQ deviation), 2 usage (bad
arguments, invalid SPEC or config). Output goes to stdout, problems to stderr: this module prints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from edge_gateway.config.model import load_config
from edge_gateway.errors import ConfigError
from edge_gateway.gxp import audit
from edge_gateway.util.files import OWNER_GROUP, write_durably

if TYPE_CHECKING:
    from edge_gateway.gxp import iq

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
AUDIT_DIR_NAME = "audit"  # under the gateway's data_dir


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


# --- audit ---------------------------------------------------------------------------------------------


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", required=True)
    for name, text in (
        ("verify", "check the hash chain; name the first broken entry"),
        ("show", "print the entries"),
    ):
        p = sub.add_parser(name, help=text)
        where = p.add_mutually_exclusive_group()
        where.add_argument("--dir", type=Path, help="the audit trail directory")
        where.add_argument("--config", type=Path, help=f"the gateway's config (trail in <data_dir>/{AUDIT_DIR_NAME})")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "show":
            p.add_argument("--since", help="only entries at or after this time (ISO 8601; UTC if no offset)")


def _audit_dir(args: argparse.Namespace) -> Path | None:
    if args.dir is not None:
        return Path(args.dir)
    if args.config is not None:
        try:
            return load_config(args.config).audit_path
        except ConfigError as exc:
            _err(str(exc))
            return None
    _err("audit needs --dir DIR or --config FILE")
    return None


def _since(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def run_audit(args: argparse.Namespace) -> int:
    directory = _audit_dir(args)
    if directory is None:
        return EXIT_USAGE
    if not directory.is_dir():
        _err(f"no audit trail at {directory}")
        return EXIT_FAILED
    if args.audit_command == "verify":
        return _verify(directory, json_out=args.json)
    try:
        since = _since(args.since) if args.since else None
    except ValueError as exc:
        _err(f"--since {args.since!r}: {exc} (use ISO 8601, e.g. 2026-11-29T08:00:00Z)")
        return EXIT_USAGE
    try:
        for entry in audit.read_entries(directory, since):
            _out(entry.to_json().decode() if args.json else _entry_line(entry))
    except audit.AuditError as exc:
        _err(str(exc))
        return EXIT_FAILED
    return EXIT_OK


def _entry_line(entry: audit.AuditEntry) -> str:
    fields = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(entry.fields.items()))
    clock = "" if entry.clock == "synchronised" else f" [clock {entry.clock}]"
    return f"{entry.seq:>6} {entry.time}{clock} {entry.event} {fields}"


def _verify(directory: Path, *, json_out: bool) -> int:
    result = audit.verify(directory)
    if json_out:
        _out(json.dumps(result.as_dict(), indent=2))
        return EXIT_OK if result.ok else EXIT_FAILED
    if result.broken is not None:
        _out(f"audit trail {directory}: BROKEN at {result.broken}")
        _out(f"{result.count} entries before it verify.")
        return EXIT_FAILED
    span = f" (seq {result.first_seq}..{result.last_seq})" if result.count else ""
    _out(f"audit trail {directory}: OK, {result.count} entries in {len(result.files)} file(s){span}")
    if result.last_hash is not None:
        _out(f"last hash {result.last_hash}")
    if result.starts_midway:
        _out(
            f"the chain starts mid-way at seq {result.first_seq} (prev {result.first_prev}): earlier files were "
            "archived; verify them with the archive"
        )
    if result.torn_tail is not None:
        t = result.torn_tail
        _out(
            f"warning: {t.file} line {t.line} is incomplete ({t.bytes} bytes): an append was interrupted; it is "
            "not an entry, and the gateway cuts it and records the cut at its next start"
        )
    return EXIT_OK


# --- iq ------------------------------------------------------------------------------------------------


def add_iq_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", type=Path, help="the approved specification (YAML); with --init, where to write it")
    parser.add_argument("--out", type=Path, help="directory for the report (JSON, HTML, PDF)")
    parser.add_argument("--init", action="store_true", help="write a SPEC from this installation, for review")
    parser.add_argument("--config", type=Path, help="the gateway's config file")
    parser.add_argument(
        "--greengrass", action="store_true", help="load the config as the Greengrass component does (run --greengrass)"
    )
    parser.add_argument(
        "--certificate", action="append", default=[], metavar="NAME=PATH", help="another certificate to qualify"
    )
    parser.add_argument(
        "--trust-list", action="append", default=[], metavar="NAME=DIR", help="a trust-list directory to qualify"
    )
    parser.add_argument("--no-pdf", action="store_true", help="write JSON and HTML only")
    parser.add_argument("--force", action="store_true", help="with --init: overwrite an existing SPEC")


def _named_paths(values: list[str], option: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            msg = f"{option} {value!r}: expected NAME=PATH"
            raise ValueError(msg)
        out[name] = Path(path)
    return out


def run_iq(args: argparse.Namespace) -> int:  # noqa: PLR0911 - one exit per kind of usage error
    # Imported here: cryptography and packaging stay out of `edge-gateway run`'s start-up.
    from edge_gateway.gxp import iq, iq_report  # noqa: PLC0415

    try:
        certificates = _named_paths(args.certificate, "--certificate")
        trust_lists = _named_paths(args.trust_list, "--trust-list")
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if args.config is None and not args.greengrass:
        _err("iq needs --config FILE (or --greengrass): the configuration is part of the installation")
        return EXIT_USAGE
    if not args.init and (args.spec is None or args.out is None):
        _err("iq needs --spec SPEC.yaml and --out DIR (or --init to write a SPEC)")
        return EXIT_USAGE
    try:
        items = iq.collect(
            args.config, greengrass_env=args.greengrass, certificates=certificates, trust_lists=trust_lists
        )
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if args.init:
        return _init(items, args.spec, force=args.force)
    try:
        report = _compare(args.spec, items)
    except (OSError, yaml.YAMLError, iq.SpecError) as exc:
        _err(f"spec {args.spec}: {exc}")
        return EXIT_USAGE
    pdf = not args.no_pdf
    if pdf and not iq_report.pdf_available():
        _err(f"warning: no PDF written ({iq_report.PDF_HINT}); use --no-pdf to silence this")
        pdf = False
    paths = iq_report.write_report(report, args.out, pdf=pdf)
    for result in report.deviations:
        _out(iq_report.summary_line(result))
    verdict = "PASS" if report.passed else "FAIL"
    body = iq_report.report_body(report)
    _out(f"IQ {verdict}: {body['passed']} passed, {body['failed']} failed; report sha256 {iq_report.body_hash(body)}")
    for path in paths:
        _out(f"wrote {path}")
    return EXIT_OK if report.passed else EXIT_FAILED


def _compare(path: Path, items: list[iq.IqItem]) -> iq.Report:
    from edge_gateway.gxp import iq  # noqa: PLC0415 - see run_iq

    raw = path.read_bytes()
    spec: Any = yaml.safe_load(raw)
    if not isinstance(spec, dict):
        msg = "not a mapping"
        raise iq.SpecError(msg)
    return iq.compare(spec, items, spec_sha256="sha256:" + hashlib.sha256(raw).hexdigest())


def _init(items: list[iq.IqItem], path: Path | None, *, force: bool) -> int:
    from edge_gateway.gxp import iq  # noqa: PLC0415 - see run_iq

    spec = iq.init_spec(items)
    text = (
        "# edge-gateway Installation Qualification specification, generated by `edge-gateway iq --init`.\n"
        "# Review every item (loosen with {version: RANGE} or {present: true} where a value may change),\n"
        "# fill in reviewed_by / approved_by, and keep the signed file under change control (docs/gxp.md).\n"
        + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
    )
    if path is None:
        sys.stdout.write(text)
        return EXIT_OK
    if path.exists() and not force:
        _err(f"{path} exists: a reviewed SPEC is not overwritten (use --force)")
        return EXIT_USAGE
    write_durably(path, text.encode(), mode=OWNER_GROUP)
    _out(f"wrote {path} ({len(items)} items): review and sign it")
    return EXIT_OK
