"""The IQ report in JSON, HTML and PDF, each stating the SHA-256 of the JSON report body.

JSON file: ``{"report": BODY, "report_sha256": "sha256:<hex>"}`` where the hash is SHA-256 of BODY in
canonical JSON (keys sorted, ``separators=(",", ":")``, ``ensure_ascii=False``), so anyone can check that
a report was not altered: ``sha256(json.dumps(doc["report"], sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode())``. BODY::

    {"format": "edge-gateway-iq/1", "time", "thing_name", "gateway_version", "spec": {"title", "sha256"},
     "verdict": "PASS" | "FAIL", "passed": n, "failed": n,
     "items": [{"key", "expected", "actual", "result": "PASS" | "FAIL", "reason", "info"}]}

The HTML and PDF render the same BODY (one line per item with its result, the verdict, the time, the
spec hash and the report hash). The PDF needs the optional dependency fpdf2 (``pip install
edge-gateway[report]``); JSON and HTML need nothing beyond the gateway's own dependencies.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from edge_gateway import __version__
from edge_gateway.gxp.iq_spec import ItemResult, Report
from edge_gateway.util.files import DIR_OWNER_GROUP, OWNER_GROUP, ensure_dir, write_durably
from edge_gateway.util.jsondoc import sha256

FORMAT = "edge-gateway-iq/1"
PDF_HINT = "the PDF needs fpdf2: pip install 'edge-gateway[report]'"


def report_body(report: Report) -> dict[str, Any]:
    failed = len(report.deviations)
    return {
        "format": FORMAT,
        "time": report.time,
        "thing_name": report.thing_name,
        "gateway_version": __version__,
        "spec": {"title": report.spec_title, "sha256": report.spec_sha256},
        "verdict": "PASS" if report.passed else "FAIL",
        "passed": len(report.results) - failed,
        "failed": failed,
        "items": [
            {
                "key": r.key,
                "expected": r.expected,
                "actual": r.actual,
                "result": "PASS" if r.passed else "FAIL",
                "reason": r.reason,
                "info": r.info,
            }
            for r in report.results
        ],
    }


def body_hash(body: dict[str, Any]) -> str:
    return sha256(body)


def render_json(body: dict[str, Any]) -> bytes:
    return json.dumps({"report": body, "report_sha256": body_hash(body)}, indent=2, ensure_ascii=False).encode()


def _detail(item: dict[str, Any]) -> str:
    """A short human line from an item's info: what the certificate is and until when it is valid."""
    certs = item["info"].get("certificates")
    if isinstance(certs, list) and certs:
        return "; ".join(f"{c['subject']} (valid until {c['not_after']})" for c in certs[:5]) + (
            f"; … {len(certs) - 5} more" if len(certs) > 5 else ""  # noqa: PLR2004 - a readable cut
        )
    return str(item["info"].get("file") or item["info"].get("path") or "")


def _text(value: Any) -> str:  # noqa: ANN401 - JSON value
    return "null" if value is None else str(value)


def render_html(body: dict[str, Any]) -> bytes:
    digest = body_hash(body)
    e = html.escape
    rows = "\n".join(
        f'<tr class="{i["result"].lower()}"><td>{i["result"]}</td><td><code>{e(i["key"])}</code></td>'
        f"<td>{e(_text(i['expected']))}</td><td><code>{e(_text(i['actual']))}</code>"
        f"<div class='d'>{e(_detail(i))}</div></td><td>{e(i['reason'])}</td></tr>"
        for i in body["items"]
    )
    verdict = body["verdict"]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Installation Qualification {e(_text(body["thing_name"]))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; width: 100%; font-size: 0.85em; }}
td, th {{ border: 1px solid #999; padding: 0.2em 0.4em; vertical-align: top; word-break: break-all; }}
tr.fail td {{ background: #fdd; }} tr.pass td:first-child {{ color: #060; }} .d {{ color: #555; font-size: 0.9em; }}
.verdict {{ font-size: 1.4em; font-weight: bold; color: {"#060" if verdict == "PASS" else "#a00"}; }}
</style></head><body>
<h1>Installation Qualification report</h1>
<p class="verdict">Verdict: {verdict} ({body["passed"]} passed, {body["failed"]} failed)</p>
<table>
<tr><th>Gateway</th><td>{e(_text(body["thing_name"]))}, edge-gateway {e(body["gateway_version"])}</td></tr>
<tr><th>Time (UTC)</th><td>{e(body["time"])}</td></tr>
<tr><th>Specification</th><td>{e(body["spec"]["title"])}, <code>{e(_text(body["spec"]["sha256"]))}</code></td></tr>
<tr><th>Report SHA-256</th><td><code>{digest}</code> (of the JSON report body, canonical JSON)</td></tr>
</table>
<h2>Items</h2>
<table>
<tr><th>Result</th><th>Item</th><th>Expected</th><th>Actual</th><th>Reason</th></tr>
{rows}
</table>
<p>Report SHA-256: <code>{digest}</code></p>
</body></html>
"""
    return page.encode()


def _latin1(text: str) -> str:
    """The PDF core fonts are Latin-1: anything else is shown as '?' (the JSON keeps the exact text)."""
    return text.encode("latin-1", "replace").decode("latin-1")


def pdf_available() -> bool:
    try:
        import fpdf  # noqa: F401, PLC0415 - optional dependency
    except ImportError:
        return False
    return True


def render_pdf(body: dict[str, Any]) -> bytes:
    """The report as PDF (A4 landscape). ``ImportError`` with the install hint when fpdf2 is missing."""
    try:
        from fpdf import FPDF  # noqa: PLC0415 - optional dependency
        from fpdf.fonts import FontFace  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(PDF_HINT) from exc
    digest = body_hash(body)
    pdf = FPDF(orientation="L", format="A4")
    pdf.set_title(f"Installation Qualification {body['thing_name']}")
    pdf.set_creator(f"edge-gateway {body['gateway_version']}")
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, "Installation Qualification report", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 13)
    color = (0, 110, 0) if body["verdict"] == "PASS" else (170, 0, 0)
    pdf.set_text_color(*color)
    verdict = f"Verdict: {body['verdict']} ({body['passed']} passed, {body['failed']} failed)"
    pdf.cell(0, 8, verdict, new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.set_font("Helvetica", "", 9)
    for line in (
        f"Gateway: {_text(body['thing_name'])}, edge-gateway {body['gateway_version']}",
        f"Time (UTC): {body['time']}",
        f"Specification: {body['spec']['title']}, {_text(body['spec']['sha256'])}",
        f"Report SHA-256 (of the JSON report body): {digest}",
    ):
        pdf.multi_cell(0, 5, _latin1(line), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    pdf.set_font("Helvetica", "", 7)
    fail = FontFace(fill_color=(253, 221, 221))
    with pdf.table(
        col_widths=(12, 55, 60, 70, 80),
        line_height=3.5,
        text_align="LEFT",
        wrapmode="CHAR",
        headings_style=FontFace(emphasis="BOLD"),
    ) as table:
        table.row(["Result", "Item", "Expected", "Actual", "Reason"])
        for item in body["items"]:
            style = None if item["result"] == "PASS" else fail
            actual = _text(item["actual"])
            detail = _detail(item)
            cells = [item["result"], item["key"], _text(item["expected"]), f"{actual}\n{detail}" if detail else actual]
            row = table.row(style=style)
            for cell in [*cells, item["reason"]]:
                row.cell(_latin1(cell))
    pdf.ln(3)
    pdf.set_font("Helvetica", "", 9)
    pdf.multi_cell(0, 5, f"Report SHA-256: {digest}", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def write_report(report: Report, out_dir: Path, *, pdf: bool = True) -> list[Path]:
    """Write the JSON, HTML and (when ``pdf``) PDF renderings; returns their paths. Names carry the time."""
    body = report_body(report)
    ensure_dir(out_dir, DIR_OWNER_GROUP)
    stamp = re.sub(r"[^0-9A-Za-z]", "", report.time.replace("+00:00", "Z"))
    who = re.sub(r"[^0-9A-Za-z_.-]", "_", report.thing_name or "gateway")
    name = f"iq-{who}-{stamp}"
    n = 1
    while any((out_dir / f"{name}{ext}").exists() for ext in (".json", ".html", ".pdf")):  # never overwrite
        n += 1
        name = f"iq-{who}-{stamp}-{n}"
    outputs = [(out_dir / f"{name}.json", render_json(body)), (out_dir / f"{name}.html", render_html(body))]
    if pdf:
        outputs.append((out_dir / f"{name}.pdf", render_pdf(body)))
    for path, data in outputs:
        write_durably(path, data, mode=OWNER_GROUP)
    return [p for p, _ in outputs]


def summary_line(item: ItemResult) -> str:
    result = "PASS" if item.passed else "FAIL"
    return f"{result}  {item.key}: {item.reason} (expected {item.expected}, actual {_text(item.actual)})"
