"""The harness's self-test: with a sync removed from the writer, the buffer checks must fail; with none, pass.

The product is never changed. ``tests/powerloss/buffer_writer.py --break ...`` removes a sync in the writer
process only, before the product is imported:

- ``fsync``: ``os.fsync`` and ``os.fdatasync`` do nothing. Appends still return, but their bytes are never made
  durable: a cut (``drop`` mode) must lose acknowledged values.
- ``dirsync``: ``edge_gateway.util.files.fsync_dir`` does nothing. Segments that existed at the start keep what
  was fdatasync'd into them, but a segment created after the start never gets a durable directory entry: a cut
  must lose the acknowledged values in it.

Each case boots from a buffer the product wrote (one cut earlier, unbroken), appends through the broken writer
until well past a few segment rolls, cuts, and runs the same check as ``test_buffer_powerloss.py``. The test
passes only if that check fails with "the harness detected the missing ...: N acknowledged values lost"; the
unbroken writer, same workload, must pass it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_gateway.buffer.disk import SUFFIX
from tests.powerloss.harness import REPO, PowerLossFS
from tests.powerloss.test_buffer_powerloss import BUFFER, Run, Truth, check_copy, parse

pytestmark = pytest.mark.usefixtures("needs_fuse")

FIRST = 300  # values the unbroken writer appends before the first cut
MORE = 600  # values the writer under test appends after it: several segment rolls at any segment size


def append_until(tmp_path: Path, name: str, disk: Path | None, until: int, broken: str | None) -> tuple[Run, Path]:
    """Boot from ``disk``, append until the value ``until`` returned, cut (drop mode); what was said, and left."""
    out, log = tmp_path / f"disk-{name}", tmp_path / f"writer-{name}.out"
    cmd = [sys.executable, "-m", "tests.powerloss.buffer_writer", "", "append", "7"]
    cmd += ["--break", broken] if broken else []
    with PowerLossFS(tmp_path / "mnt", seed_dir=disk) as fs:
        cmd[3] = str(fs.mount / BUFFER)
        with log.open("w") as stdout, log.with_suffix(".err").open("w") as stderr:
            proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, cwd=REPO)
        try:
            deadline = time.monotonic() + 60  # only gives up waiting
            while parse(log).durable < until:
                assert proc.poll() is None, f"the writer exited: {log.with_suffix('.err').read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"the writer did not append up to {until} within 60 s"
                time.sleep(0.01)
            fs.cut(proc, out)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return parse(log), out


def segments(disk: Path) -> set[str]:
    return {p.name for p in (disk / BUFFER).glob("*" + SUFFIX)}


@pytest.mark.parametrize(
    ("broken", "what"),
    [("fsync", "the missing fsync"), ("dirsync", "the missing directory fsync"), (None, "")],
    ids=["fsync-removed", "dir-fsync-removed", "product"],
)
def test_the_buffer_check_fails_when_a_sync_is_missing(tmp_path: Path, broken: str | None, what: str) -> None:
    truth = Truth("append")
    first, disk = append_until(tmp_path, "product", None, FIRST, None)
    truth.learn(first)
    truth.check(*check_copy(disk, tmp_path), context="the unbroken writer")
    before = segments(disk)
    run, out = append_until(tmp_path, broken or "product-again", disk, truth.last + MORE, broken)
    truth.learn(run)
    assert run.opened_at == truth.last
    found = check_copy(out, tmp_path)
    if broken is None:
        truth.check(*found, context="the unbroken writer")
        return
    with pytest.raises(AssertionError, match=rf"^the harness detected {what}: [1-9]\d* acknowledged values lost") as e:
        truth.check(*found, context=f"the harness detected {what}")
    print(str(e.value).splitlines()[0])
    if broken == "dirsync":
        # What survived is what sat in the segments of the start; every segment created since is gone.
        assert segments(out) <= before, f"new segments survived without a directory fsync: {segments(out) - before}"
        assert found[1] < run.durable
