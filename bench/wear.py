"""Device wear: bytes a real block device receives per payload byte, under ext4, at paced append rates.

    python -m bench.wear [--seconds 10] [--dir DIR] [--rates 100,1000]    (``make bench-buffer`` runs every row)

The device: a sparse 1 GiB image file (in a temporary directory, or under ``--dir``) attached as a loop device
(``losetup -f --show``) and formatted with ``mkfs.ext4 -q`` and the defaults of mke2fs.conf (4 KiB blocks, a
16 MiB journal, metadata_csum), mounted without options (``data=ordered``, ``commit=5``), like the root file
system of Raspberry Pi OS. One mkfs option is added, ``-E lazy_itable_init=0,lazy_journal_init=0``: it zeroes
the inode tables at mkfs time, as on a card whose first boot is long past; without it the kernel's ext4lazyinit
thread writes them (16 MiB) at a random moment up to 5 s after the first mount, into whichever row runs then.
The image and the loop device are always removed and detached (on an error or SIGTERM too).

A row: mount; open a DiskBuffer (default settings but ``fsync_interval_ms``) in a fresh directory; one
append that creates the segment; freeze and thaw the file system (``fsfreeze``), so everything before is on
the device; read ``/sys/block/loopN/stat`` and ``/proc/self/io``; append at the row's pace for ``--seconds``;
wait for every append; freeze and thaw again, which writes back whatever the kernel still held (dirty pages,
the journal's checkpoint of the metadata to its home blocks: what an unmount writes, without the ledger write
of ``close()``); read both again; close; unmount. Field 7 of the stat is sectors written, 512 bytes each
whatever the device's block size (the kernel's Documentation/block/stat.rst): data, journal, metadata and
directory blocks, as the device received them. What the loop device's image file then costs the host's disk
is not counted, and nothing inside a card (its own amplification) is: a loop device has none.

Readings look like an OPC UA subscription's: float32 values with noise, GOOD, a source timestamp, tag names of
real length (``Line3/Press07/MotorCurrent_1501``), ~68 payload bytes each. Payload bytes are bench.buffer's:
the sum of ``len(encode_reading(r))`` over the readings appended. ``disk_bytes_per_payload_byte`` is
bench.buffer's figure over the same window: the process's ``write_bytes`` (``/proc/self/io``; ``write_bytes``
here is the one bench.buffer uses), which counts a page each time the process dirties it and nothing of the
journal.

Pacing: each append starts at its slot of a fixed grid, a batch every 100 ms (a poll group or an OPC UA
publishing interval) and, at 100 readings/s, also one reading every 10 ms (the worst case), without waiting
for the previous append, so the offered rate holds whatever the latency; latency is one ``await
buffer.append(batch)`` as its caller sees it. The grid runs no buffer maintenance (as bench.buffer); three
more rows at 100 readings/s run ``maintain()`` every second as the gateway's supervisor does, which writes
ledger.json (temp file, fsync, rename, fsync of the directory) every second while readings come in.

Where loop devices cannot be used (not root, no loop support, no mkfs.ext4, mount refused) one line says so
and there are no figures; the rest of the benchmark goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edge_gateway.buffer.codec import encode_reading
from edge_gateway.buffer.disk import DiskBuffer
from edge_gateway.model import Quality, Reading

IMAGE_BYTES = 1 << 30  # at least 512 MiB, or mke2fs picks its "small" profile (1 KiB blocks)
MKFS = ("mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0")
SECTOR = 512  # the unit of /sys/block/<dev>/stat, whatever the device's block size
DAY_S = 86_400
FLUSHES = 15  # index of "flush I/Os" in /sys/block/<dev>/stat (Linux 5.5 and later)


@dataclass(frozen=True)
class Row:
    rate: int  # readings/s
    per_append: int  # readings per append
    fsync_interval_ms: int
    maintain_s: float = 0.0  # run maintain() this often, as the gateway does (0: never)

    @property
    def period_s(self) -> float:
        return self.per_append / self.rate

    @property
    def key(self) -> str:
        maintain = f"_maintain{self.maintain_s:g}s" if self.maintain_s else ""
        return f"wear_{self.rate}rps_batch{self.per_append}_fsync{self.fsync_interval_ms}ms{maintain}"

    @property
    def label(self) -> str:
        maintain = f" + maintain() every {self.maintain_s:g} s" if self.maintain_s else ""
        return f"{self.rate:>6,}/s, {self.per_append:>4} every {self.period_s * 1000:>3.0f} ms{maintain}"


RATES = ((100, 1), (100, 10), (1_000, 100), (10_000, 1_000))  # readings/s, readings per append
FSYNC_INTERVALS_MS = (0, 100, 1_000)
GATEWAY_MAINTAIN_S = 1.0  # the supervisor's maintenance interval: a ledger write a second while readings come in
ROWS = (
    *(Row(rate, n, ms) for rate, n in RATES for ms in FSYNC_INTERVALS_MS),
    *(Row(100, 10, ms, GATEWAY_MAINTAIN_S) for ms in FSYNC_INTERVALS_MS),
)


class UnavailableError(Exception):
    """Loop devices cannot be used here (the reason is the message)."""


def write_bytes() -> int:
    """Bytes this process caused to be written to storage (``/proc/self/io`` write_bytes)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


class Plant:
    """Readings of a plant floor: tags of real length, float32 values with noise, OPC UA source timestamps."""

    MACHINES = ("Press", "Robot", "Conveyor", "Oven", "Pump", "Mixer")
    SIGNALS = (
        "MotorCurrent",
        "MotorTemperature",
        "HydraulicPressure",
        "OilTemp",
        "VibrationRms",
        "SpindleSpeed",
        "CycleTime",
        "FlowRate",
        "Torque",
        "Position",
    )
    SOURCE = "press-line-3"

    def __init__(self, tags: int = 1_000, seed: int = 19) -> None:
        self._rng = random.Random(seed)
        rng = self._rng
        self.tags = [
            f"Line{rng.randint(1, 9)}/{rng.choice(self.MACHINES)}{rng.randint(1, 40):02d}/"
            f"{rng.choice(self.SIGNALS)}_{1000 + i}"
            for i in range(tags)
        ]
        self._base = [rng.uniform(1.0, 400.0) for _ in range(tags)]
        self._next = 0

    def readings(self, n: int) -> list[Reading]:
        now = time.time_ns()
        rng, f32 = self._rng, struct.Struct("<f")
        out = []
        for _ in range(n):
            i = self._next
            self._next = (i + 1) % len(self.tags)
            value = f32.unpack(f32.pack(self._base[i] * (1 + rng.gauss(0, 0.01))))[0]
            out.append(Reading(self.SOURCE, self.tags[i], value, Quality.GOOD, now, now - rng.randint(1, 5_000_000)))
        return out


def run(cmd: Sequence[str]) -> str:
    try:
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise UnavailableError(f"{cmd[0]} not found") from exc
    except subprocess.CalledProcessError as exc:
        raise UnavailableError(f"{' '.join(cmd)} failed: {(exc.stderr or exc.stdout).strip()}") from exc
    return done.stdout.strip()


@dataclass
class LoopFs:
    device: str  # /dev/loopN
    mountpoint: Path
    mounted: bool = False

    @property
    def name(self) -> str:
        return Path(self.device).name

    def mount(self) -> None:
        run(["mount", self.device, str(self.mountpoint)])
        self.mounted = True

    def umount(self) -> None:
        subprocess.run(["umount", str(self.mountpoint)], check=True, capture_output=True, timeout=60)
        self.mounted = False

    def stat(self) -> list[int]:
        return [int(x) for x in Path(f"/sys/block/{self.name}/stat").read_text().split()]

    def flush(self) -> None:
        """Write back everything and checkpoint the journal, as an unmount does (freeze, then thaw)."""
        run(["fsfreeze", "--freeze", str(self.mountpoint)])
        self.thaw()

    def thaw(self) -> None:
        subprocess.run(["fsfreeze", "--unfreeze", str(self.mountpoint)], check=False, capture_output=True, timeout=60)

    def options(self) -> str:
        try:
            return ",".join(Path(f"/proc/fs/ext4/{self.name}/options").read_text().split())
        except OSError:
            return ""


@contextmanager
def loop_filesystem(parent: Path | None) -> Iterator[LoopFs]:
    """A fresh ext4 file system on a loop device, not mounted; always unmounted, detached and removed after."""
    if parent:
        parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-wear-", dir=parent, ignore_cleanup_errors=True) as tmp:
        image, mnt = Path(tmp) / "card.img", Path(tmp) / "mnt"
        mnt.mkdir()
        with image.open("wb") as f:
            f.truncate(IMAGE_BYTES)  # sparse
        fs: LoopFs | None = None
        try:
            fs = LoopFs(run(["losetup", "-f", "--show", str(image)]), mnt)
            if not Path(f"/sys/block/{fs.name}/stat").exists():
                raise UnavailableError(f"/sys/block/{fs.name}/stat is missing")
            run([*MKFS, fs.device])
            yield fs
        finally:
            if fs is not None:
                if fs.mounted:
                    fs.thaw()  # in case a freeze was interrupted
                    try:
                        fs.umount()
                    except (OSError, subprocess.SubprocessError):
                        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True, timeout=60)
                subprocess.run(["losetup", "-d", fs.device], check=False, capture_output=True, timeout=60)
            image.unlink(missing_ok=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@dataclass
class Window:
    """What one row measured, from the first paced append to the device's last write for it."""

    readings: int = 0
    payload: int = 0  # bytes, sum of encode_reading()
    process: int = 0  # bytes, /proc/self/io write_bytes
    device: list[int] = field(default_factory=list)  # /sys/block/<dev>/stat after minus before
    after: list[int] = field(default_factory=list)  # /sys/block/<dev>/stat after
    latencies: list[float] = field(default_factory=list)  # s, sorted


async def feed(fs: LoopFs, path: Path, row: Row, seconds: float) -> Window:
    """Append at ``row``'s pace for ``seconds`` (and run ``maintain()`` as the row says)."""
    buf = DiskBuffer(path, ["cloud"], fsync_interval_ms=row.fsync_interval_ms)
    tasks: list[asyncio.Task[None]] = []
    try:
        return await paced(fs, buf, row, seconds, tasks)
    finally:
        for task in tasks:  # none left unless something failed
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await buf.close()


async def paced(fs: LoopFs, buf: DiskBuffer, row: Row, seconds: float, tasks: list[asyncio.Task[None]]) -> Window:
    plant = Plant()
    await buf.append(plant.readings(row.per_append))  # creates the directory and the segment: not counted
    fs.flush()
    w = Window()
    before, w0 = fs.stat(), write_bytes()

    async def append(batch: list[Reading]) -> None:
        t0 = time.perf_counter()
        await buf.append(batch)
        w.latencies.append(time.perf_counter() - t0)

    stop = asyncio.Event()

    async def maintain() -> None:  # as the supervisor's maintenance loop
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), row.maintain_s)
                break
            await buf.maintain()

    loop = asyncio.get_running_loop()
    if row.maintain_s:
        tasks.append(loop.create_task(maintain()))
    start = loop.time()
    for k in range(round(seconds / row.period_s)):
        delay = start + k * row.period_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        batch = plant.readings(row.per_append)
        tasks.append(loop.create_task(append(batch)))
        w.readings += len(batch)
        w.payload += sum(len(encode_reading(r)) for r in batch)
    stop.set()
    await asyncio.gather(*tasks)
    fs.flush()  # what the kernel would still write back later: dirty pages, the journal's checkpoint
    w.process = write_bytes() - w0
    w.after = fs.stat()
    w.device = [b - a for a, b in zip(before, w.after, strict=True)]
    w.latencies.sort()
    return w


def measure_row(fs: LoopFs, index: int, row: Row, seconds: float) -> dict[str, float]:
    fs.mount()
    w = asyncio.run(feed(fs, fs.mountpoint / f"buffer-{index}", row, seconds))
    fs.umount()  # after a failure, loop_filesystem() unmounts
    device = w.device[6] * SECTOR
    closing = (fs.stat()[6] - w.after[6]) * SECTOR  # close() (a ledger write) + unmount: not in the row
    figures = {
        "device_bytes_per_payload_byte": round(device / w.payload, 3),
        "disk_bytes_per_payload_byte": round(w.process / w.payload, 3),
        "device_mb_per_day": round(device / seconds * DAY_S / 1e6, 1),
        "device_writes_per_s": round(w.device[4] / seconds, 1),
        "append_p50_ms": round(percentile(w.latencies, 0.50) * 1000, 2),
        "append_p99_ms": round(percentile(w.latencies, 0.99) * 1000, 2),
        "payload_bytes_per_reading": round(w.payload / w.readings, 1),
        "close_and_unmount_device_bytes": closing,
    }
    if len(w.device) > FLUSHES:
        figures["device_flushes_per_s"] = round(w.device[FLUSHES] / seconds, 1)
    return figures


def measure(seconds: float = 10.0, parent: Path | None = None, *, rows: Sequence[Row] = ROWS) -> dict[str, float]:
    """One row per entry of ``rows``, flat ``<row.key>_<figure>`` keys; none when loop devices cannot be used
    (a line says why)."""
    result: dict[str, float] = {}
    t0 = time.monotonic()
    # A SIGTERM (a CI timeout, systemd) must also unmount and detach: raise SystemExit and let finally run.
    term = signal.signal(signal.SIGTERM, _exit_on_term)
    try:
        with loop_filesystem(parent) as fs:
            print(
                f"device wear: ext4 on {fs.device} ({IMAGE_BYTES >> 30} GiB image file, {' '.join(MKFS)}), "
                f"{seconds:g} s per row"
            )
            fs.mount()
            print(f"  mount options: {fs.options()}")
            fs.umount()
            print(
                f"  {'rate, appends':<44}{'fsync_ms':>9}{'device B/payload B':>20}{'process B/payload B':>21}"
                f"{'device MB/day':>15}{'writes/s':>10}{'append p50 / p99 ms':>22}"
            )
            for i, row in enumerate(rows):
                r = measure_row(fs, i, row, seconds)
                result |= {f"{row.key}_{k}": v for k, v in r.items()}
                print(
                    f"  {row.label:<44}{row.fsync_interval_ms:>9}{r['device_bytes_per_payload_byte']:>20.3f}"
                    f"{r['disk_bytes_per_payload_byte']:>21.3f}{r['device_mb_per_day']:>15,.1f}"
                    f"{r['device_writes_per_s']:>10,.0f}{r['append_p50_ms']:>13.1f} / {r['append_p99_ms']:.1f}",
                    flush=True,
                )
    except UnavailableError as exc:
        print(f"device wear: skipped, loop devices cannot be used here: {exc}")
        return {}
    finally:
        signal.signal(signal.SIGTERM, term)
    result["wear_seconds_per_row"] = seconds
    result["wear_wall_s"] = round(time.monotonic() - t0, 1)
    return result


def _exit_on_term(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description="Device bytes written per payload byte (loop device, ext4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each row appends")
    parser.add_argument("--dir", type=Path, help="where to put the image file (default: a temporary directory)")
    parser.add_argument("--rates", help="only these readings/s, comma-separated (default: all)")
    args = parser.parse_args()
    rows = ROWS
    if args.rates:
        wanted = {int(x) for x in args.rates.split(",")}
        rows = tuple(r for r in ROWS if r.rate in wanted)
    measure(args.seconds, args.dir, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
