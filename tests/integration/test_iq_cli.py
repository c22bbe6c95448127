"""``edge-gateway iq``: --init, then the report in JSON, HTML and PDF; deviations give exit code 1."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from edge_gateway.gxp.cli import add_iq_arguments, run_iq
from edge_gateway.gxp.iq_report import pdf_available
from tests.unit.test_iq import config_doc, expired_cert, valid_cert


def iq(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edge-gateway iq")
    add_iq_arguments(parser)
    return run_iq(parser.parse_args(argv))


@pytest.fixture
def installation(tmp_path: Path) -> Path:
    valid_cert(tmp_path / "device.pem", "line-7")
    valid_cert(tmp_path / "ca.pem", "Test Root CA")
    trust = tmp_path / "trusted"
    trust.mkdir()
    valid_cert(trust / "plc.pem", "PLC 1")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config_doc(tmp_path)))
    return path


def only(out: Path, suffix: str) -> Path:
    (found,) = out.glob(f"iq-*{suffix}")
    return found


def test_init_then_iq_passes_and_writes_json_html_with_the_report_hash(
    installation: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.yaml"
    common = ("--config", str(installation), "--trust-list", f"opcua={tmp_path / 'trusted'}")
    assert iq("--init", "--spec", str(spec), *common) == 0
    assert "review and sign it" in capsys.readouterr().out
    assert yaml.safe_load(spec.read_text())["items"]["trust_list.opcua"]["equals"].startswith("sha256:")
    assert iq("--init", "--spec", str(spec), *common) == 2  # a reviewed SPEC is never overwritten
    assert "exists" in capsys.readouterr().err
    out = tmp_path / "report"
    assert iq("--spec", str(spec), "--out", str(out), "--no-pdf", *common) == 0
    printed = capsys.readouterr().out
    assert "IQ PASS:" in printed
    (json_file,) = out.glob("iq-line-7-*.json")
    doc = json.loads(json_file.read_text())
    body = doc["report"]
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    digest = "sha256:" + hashlib.sha256(canonical).hexdigest()
    assert doc["report_sha256"] == digest
    assert digest in printed
    assert body["verdict"] == "PASS"
    assert body["failed"] == 0
    assert body["spec"]["sha256"] == "sha256:" + hashlib.sha256(spec.read_bytes()).hexdigest()
    assert {i["result"] for i in body["items"]} == {"PASS"}
    page = json_file.with_suffix(".html").read_text()
    assert digest in page
    assert "Verdict: PASS" in page
    assert page.count("<tr class=") == len(body["items"])
    assert not list(out.glob("*.pdf"))
    # A second run (same second or not) adds a report, it never replaces one.
    assert iq("--spec", str(spec), "--out", str(out), "--no-pdf", *common) == 0
    assert len(list(out.glob("iq-line-7-*.json"))) == 2
    assert len(list(out.glob("iq-line-7-*.html"))) == 2


def test_a_deviation_exits_1_and_names_the_item(
    installation: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.yaml"
    assert iq("--init", "--spec", str(spec), "--config", str(installation)) == 0
    expired_cert(tmp_path / "device.pem", "line-7")
    out = tmp_path / "report"
    assert iq("--spec", str(spec), "--out", str(out), "--config", str(installation), "--no-pdf") == 1
    printed = capsys.readouterr().out
    assert [line.split()[1] for line in printed.splitlines() if line.startswith("FAIL")] == ["certificate.device:"]
    assert "IQ FAIL: " in printed
    body = json.loads(only(out, ".json").read_text())["report"]
    assert [i["key"] for i in body["items"] if i["result"] == "FAIL"] == ["certificate.device"]
    assert "Verdict: FAIL" in only(out, ".html").read_text()


def test_usage_errors(installation: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert iq("--config", str(installation)) == 2
    assert "--spec SPEC.yaml and --out DIR" in capsys.readouterr().err
    assert iq("--spec", "s.yaml", "--out", "o") == 2
    assert "needs --config FILE" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec_version: 1\nitems:\n  os.release: {equal: x}\n")
    assert iq("--spec", str(bad), "--out", str(tmp_path / "o"), "--config", str(installation)) == 2
    assert "spec item 'os.release'" in capsys.readouterr().err
    assert iq("--init", "--config", str(installation), "--certificate", "nopath") == 2
    assert "expected NAME=PATH" in capsys.readouterr().err


@pytest.mark.skipif(not pdf_available(), reason="fpdf2 is not installed (pip install '.[report]')")
@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="pdftoppm missing: apt-get install poppler-utils")
def test_the_pdf_opens_and_states_verdict_and_hash(installation: Path, tmp_path: Path) -> None:
    from PIL import Image  # noqa: PLC0415 - fpdf2 depends on Pillow

    spec = tmp_path / "spec.yaml"
    assert iq("--init", "--spec", str(spec), "--config", str(installation)) == 0
    out = tmp_path / "report"
    assert iq("--spec", str(spec), "--out", str(out), "--config", str(installation)) == 0
    pdf = only(out, ".pdf")
    digest = json.loads(only(out, ".json").read_text())["report_sha256"]
    subprocess.run(["pdftoppm", "-png", "-r", "50", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "page")], check=True)
    (png,) = tmp_path.glob("page*.png")
    with Image.open(png) as image:
        assert image.width > 300
        assert image.height > 200
        darkest, lightest = image.convert("L").getextrema()
    assert isinstance(darkest, int)
    assert darkest < 128 < lightest  # text on paper: the page is not blank
    text = subprocess.run(["pdftotext", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    assert "Verdict: PASS" in text
    assert digest in text.replace("\n", "")
