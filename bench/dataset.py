"""The benchmark dataset that looks like a plant: thousands of tags, realistic names, float32 signals.

Contract (every benchmark that claims "realistic dataset" uses this module, nothing else):

- ``plant_tags(n, seed=SEED)`` gives ``n`` tag definitions, the same ones for the same ``(n, seed)``; the
  first ``k`` tags of ``plant_tags(n)`` are ``plant_tags(k)`` (a bigger plant only adds machines). Names are
  hierarchical and vary in shape and length like a real tag list (``Line3/Press07/MotorCurrent_1501``,
  ``Utilities/Compressor02/DischargePressure``, ``Line1/Chiller01/Zone10/Conductivity``; 15-50
  characters, ~31 on average). The mix (5,000 tags): 84 % float32 signals, 5 % int32 (recipe, step,
  alarm code), 5 % bools, 4 % strings, 2 % loss-check counters (one per machine). ``only="float32"``
  keeps the float32 tags alone (still ``n`` of them), which is what the Modbus workloads poll.
- ``values(tags, poll, interval_ms)`` are the values of poll number ``poll`` (time ``poll * interval_ms``
  since the start; ``poll_index(t_ns, start_ns)`` gives the poll of a time), deterministic in ``(seed,
  poll)``: float32 signals are a level plus a slow sine, a linear drift, a slow wander and Gaussian noise,
  rounded to float32 exactly (``struct.unpack('<f', struct.pack('<f', x))[0]`` is the value), so they
  print as long decimals like a PLC's floats do, never as 4-decimal numbers. Ints step now and then,
  bools toggle now and then, strings change rarely. Counters are ``poll + 1`` (uint32, wrapping): a
  consumer that sees every poll sees them rise by exactly one.
- ``readings(tags, poll, ...)`` are the same values as ``edge_gateway.model.Reading`` objects of one poll
  (gateway timestamp = the poll's time), with ~0.5 % of the non-counter tags BAD (value ``None``, quality
  BAD, a Modbus-like status text). Counters are never BAD, so loss checks stay exact.
- ``holding_registers(tags)`` lays the tags onto Modbus holding registers from address 0, contiguous, in tag
  order: float32, int32 and uint32 (counters) take 2 registers, **high word first** (word order big) and
  high byte first in each register (byte order big) - the gateway's defaults and ThingsBoard's
  ``byteOrder``/``wordOrder`` ``BIG``; bools take one register (bit 0); strings 8 registers (16 characters,
  NUL padded). ``register_image(points, values)`` encodes one poll's values into the register list a
  simulator serves. BAD exists only in ``readings``: a register image always holds a value.
- ``RoundedReference``: the data the benchmarks used before this module (500 aliases ``plant.temp000``, a
  bounded random walk rounded to 4 decimals). Kept only as a labelled reference for comparing with older
  figures; it is not plant-like (short names, 4-decimal values compress and print unrealistically well).
"""

from __future__ import annotations

import math
import random
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from edge_gateway.model import Quality, Reading, Value

SEED = 20261208
DEFAULT_INTERVAL_MS = 100
BAD_FRACTION = 0.005
STRING_REGISTERS = 8
Kind = Literal["float32", "int32", "bool", "string", "counter"]

# A BAD reading's status: what a Modbus source reports when a read fails.
BAD_STATUSES = (
    "modbus exception 2 (illegal data address)",
    "modbus exception 4 (server device failure)",
    "modbus exception 6 (server device busy)",
    "timeout after 2.0 s: no answer from unit 1",
    "connection reset by peer while reading holding registers",
)

# (signal name, level range, amplitude as a fraction of level, noise as a fraction of level, period s)
_FLOAT_SIGNALS: tuple[tuple[str, float, float, float, float, float], ...] = (
    ("MotorCurrent", 4.0, 85.0, 0.08, 0.01, 37.0),
    ("MotorSpeed", 300.0, 3000.0, 0.03, 0.002, 61.0),
    ("MotorTorque", 5.0, 400.0, 0.10, 0.01, 23.0),
    ("BearingTemp", 30.0, 85.0, 0.02, 0.002, 900.0),
    ("OilTemp", 35.0, 70.0, 0.02, 0.001, 1200.0),
    ("TempActual", 20.0, 260.0, 0.01, 0.001, 600.0),
    ("TempSetpoint", 20.0, 260.0, 0.0, 0.0, 3600.0),
    ("Pressure", 0.5, 12.0, 0.05, 0.004, 45.0),
    ("DischargePressure", 5.0, 14.0, 0.04, 0.003, 30.0),
    ("SuctionPressure", 0.2, 3.0, 0.04, 0.005, 30.0),
    ("FlowRate", 0.5, 400.0, 0.06, 0.008, 90.0),
    ("Level", 5.0, 95.0, 0.05, 0.002, 1800.0),
    ("VibrationRms", 0.3, 12.0, 0.15, 0.05, 17.0),
    ("Vibration_X", 0.1, 8.0, 0.2, 0.08, 11.0),
    ("ActivePower_kW", 2.0, 450.0, 0.08, 0.01, 120.0),
    ("Voltage_L1", 225.0, 235.0, 0.005, 0.001, 300.0),
    ("Humidity", 20.0, 70.0, 0.03, 0.004, 2400.0),
    ("Position", 0.0, 1200.0, 0.4, 0.0005, 8.0),
    ("NetWeight", 0.2, 25.0, 0.01, 0.002, 15.0),
    ("Density", 0.95, 1.35, 0.01, 0.001, 700.0),
    ("pH", 5.5, 8.5, 0.01, 0.002, 1500.0),
    ("Conductivity", 50.0, 1800.0, 0.03, 0.005, 800.0),
)
_INT_SIGNALS = ("RecipeNo", "StepNo", "AlarmCode", "ModeWord", "BatchSize")
_BOOL_SIGNALS = ("Running", "Fault", "AutoMode", "DoorClosed", "EStopOk", "ValveOpen")
_STRING_SIGNALS = ("RecipeName", "BatchId", "ProductCode", "OperatorId")
_STRING_WORDS = ("PET05", "HDPE-A", "BLEND7", "STD", "XL", "ECO", "NIGHT", "TRIAL", "K2", "MIX")
_MACHINES = (
    "Press", "Oven", "Extruder", "Mixer", "Conveyor", "Filler", "Capper", "Labeler", "Palletizer",
    "Robot", "Pump", "Chiller", "Granulator", "Dryer", "Welder", "CNC",
)  # fmt: skip
_UTILITIES = ("Compressor", "Boiler", "CoolingTower", "Transformer", "Chiller", "VacuumPump")
_AREAS = ("Packaging", "Utilities", "Warehouse")
_SUBUNITS = ("Zone", "Valve", "Axis", "Station", "Heater", "Drive")
_FLOAT_SHARE, _INT_SHARE, _BOOL_SHARE = 0.86, 0.05, 0.05  # the rest: strings (counters come per machine)
_TAGS_PER_MACHINE = (24, 72)  # a machine's tag count, uniform in this range


@dataclass(frozen=True, slots=True)
class Tag:
    """One tag's definition; the signal parameters apply to float32 (level, amplitude, noise, drift)."""

    name: str
    kind: Kind
    index: int  # position in plant_tags(n) (with only=..., in the filtered list)
    level: float = 0.0
    amplitude: float = 0.0
    noise: float = 0.0
    period_s: float = 60.0
    phase: float = 0.0
    drift_per_h: float = 0.0
    choices: int = 1  # ints: values in 0..choices-1 plus a base; strings: words combined


@dataclass(frozen=True, slots=True)
class RegisterPoint:
    """Where a tag lives in the holding registers; data_type as the gateway's Modbus config spells it."""

    tag: Tag
    address: int
    data_type: str
    registers: int

    def gateway_point(self, alias: str | None = None) -> dict[str, object]:
        """The point as a ``sources[].points[]`` entry of the gateway's Modbus config."""
        point: dict[str, object] = {"alias": alias or self.tag.name, "address": self.address}
        point["data_type"] = self.data_type
        if self.data_type == "bool":
            point["bit"] = 0
        if self.data_type == "string":
            point["length"] = self.registers
        return point


def _machine_names(rng: random.Random) -> list[str]:
    """Machine paths in plant order: lines of machines, then the utility and packaging areas, repeated."""
    paths: list[str] = []
    for line in range(1, 1000):
        counts: dict[str, int] = {}
        for _ in range(rng.randint(4, 9)):
            kind = rng.choice(_MACHINES)
            counts[kind] = counts.get(kind, 0) + 1
            paths.append(f"Line{line}/{kind}{counts[kind]:02d}")
        area = _AREAS[line % len(_AREAS)]
        kinds = _UTILITIES if area == "Utilities" else _MACHINES
        paths.extend(f"{area}/{rng.choice(kinds)}{line * 3 + n:02d}" for n in range(rng.randint(1, 3)))
        if len(paths) > 5000:
            return paths
    return paths


def _signal_name(rng: random.Random, base: str, serial: int) -> str:
    """One of the shapes real tag lists mix: ``Signal``, ``Signal_1501``, ``Zone4/Signal``, ``Signal2``."""
    shape = rng.random()
    if shape < 0.35:
        return f"{base}_{serial}"
    if shape < 0.6:
        return f"{rng.choice(_SUBUNITS)}{rng.randint(1, 12)}/{base}"
    if shape < 0.75:
        return f"{base}{rng.randint(1, 4)}"
    return base


def _float_tag(rng: random.Random, signal: tuple[str, float, float, float, float, float], name: str, index: int) -> Tag:
    _, low, high, amp, noise, period = signal
    level = rng.uniform(low, high)
    return Tag(
        name=name,
        kind="float32",
        index=index,
        level=level,
        amplitude=level * amp * rng.uniform(0.5, 1.5),
        noise=level * noise * rng.uniform(0.5, 1.5),
        period_s=period * rng.uniform(0.7, 1.4),
        phase=rng.uniform(0, 2 * math.pi),
        drift_per_h=level * rng.uniform(-0.02, 0.02) if noise else 0.0,
    )


def _all_tags(n: int, seed: int) -> list[Tag]:
    rng = random.Random(seed)
    machines = _machine_names(random.Random(seed + 1))
    tags: list[Tag] = []
    serial = 1000 + rng.randrange(500)
    used: set[str] = set()
    for machine in machines:
        tags.append(Tag(f"{machine}/WatchdogCounter", "counter", len(tags)))
        for _ in range(rng.randint(*_TAGS_PER_MACHINE)):
            serial += rng.randint(1, 3)
            draw = rng.random()
            signal = rng.choice(_FLOAT_SIGNALS)
            kind: Kind
            if draw < _FLOAT_SHARE:
                base, kind = signal[0], "float32"
            elif draw < _FLOAT_SHARE + _INT_SHARE:
                base, kind = rng.choice(_INT_SIGNALS), "int32"
            elif draw < _FLOAT_SHARE + _INT_SHARE + _BOOL_SHARE:
                base, kind = rng.choice(_BOOL_SIGNALS), "bool"
            else:
                base, kind = rng.choice(_STRING_SIGNALS), "string"
            name = f"{machine}/{_signal_name(rng, base, serial)}"
            if name in used:
                name = f"{machine}/{base}_{serial}"
            used.add(name)
            if kind == "float32":
                tags.append(_float_tag(rng, signal, name, len(tags)))
            elif kind == "int32":
                tags.append(Tag(name, "int32", len(tags), level=rng.randrange(1, 200), choices=rng.randint(2, 40)))
            else:
                tags.append(Tag(name, kind, len(tags), period_s=rng.uniform(20, 600), phase=rng.uniform(0, 1)))
            if len(tags) >= n:
                return tags
        if len(tags) >= n:
            break
    return tags[:n]


def plant_tags(n: int, *, seed: int = SEED, only: Kind | None = None) -> list[Tag]:
    """``n`` tag definitions; with ``only``, ``n`` tags of that kind (indexes renumbered 0..n-1)."""
    if only is None:
        return _all_tags(n, seed)
    want: list[Tag] = []
    size = max(64, n * 2)
    while len(want) < n:
        want = [t for t in _all_tags(size, seed) if t.kind == only][:n]
        size *= 2
        if size > 64 * (n + 64) * 2:
            break
    return [Tag(t.name, t.kind, i, t.level, t.amplitude, t.noise, t.period_s, t.phase, t.drift_per_h, t.choices)
            for i, t in enumerate(want)]  # fmt: skip


def float32(x: float) -> float:
    """``x`` rounded to the nearest float32, as a Python float."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def _rng(seed: int, poll: int) -> random.Random:
    return random.Random(seed * 1_000_003 + poll)


def poll_index(t_ns: int, start_ns: int = 0, interval_ms: int = DEFAULT_INTERVAL_MS) -> int:
    """The poll that time ``t_ns`` falls in, counting from ``start_ns`` (poll 0)."""
    return (t_ns - start_ns) // (interval_ms * 1_000_000)


def values(tags: Sequence[Tag], poll: int, interval_ms: int = DEFAULT_INTERVAL_MS, *, seed: int = SEED) -> list[Value]:
    """The value of every tag at poll ``poll`` (time ``poll * interval_ms`` ms after the start)."""
    rng = _rng(seed, poll)
    gauss, t = rng.gauss, poll * interval_ms / 1000
    hours = t / 3600
    floats: list[float] = []
    out: list[Value] = []
    slots: list[int] = []
    for tag in tags:
        kind = tag.kind
        if kind == "float32":
            wander = 0.3 * tag.amplitude * math.sin(t / (7 * tag.period_s + 600) + 2 * tag.phase)
            x = tag.level + tag.amplitude * math.sin(t * 2 * math.pi / tag.period_s + tag.phase)
            floats.append(x + wander + tag.drift_per_h * hours + (gauss(0.0, tag.noise) if tag.noise else 0.0))
            slots.append(len(out))
            out.append(0.0)
        elif kind == "counter":
            out.append((poll + 1) & 0xFFFFFFFF)
        elif kind == "int32":
            epoch = int((t + tag.index * 97) // (30 + tag.index % 600))
            out.append(int(tag.level) + (epoch * 7919 + tag.index) % tag.choices)
        elif kind == "bool":
            out.append(int(t / tag.period_s + tag.phase) % 2 == 0)
        else:
            epoch = int((t + tag.index * 131) // 900)
            a, b = _STRING_WORDS[(epoch + tag.index) % 10], _STRING_WORDS[(epoch * 3 + tag.index * 7) % 10]
            out.append(f"{a}-{b}-{(epoch * 37 + tag.index) % 1000:03d}"[: 2 * STRING_REGISTERS])
    # One C call rounds every float to float32 (array 'f' stores float32; tolist gives them back as doubles).
    for slot, v in zip(slots, array("f", floats).tolist(), strict=True):
        out[slot] = v
    return out


def readings(
    tags: Sequence[Tag],
    poll: int,
    *,
    source: str = "plant",
    start_ns: int = 0,
    interval_ms: int = DEFAULT_INTERVAL_MS,
    seed: int = SEED,
    bad_fraction: float = BAD_FRACTION,
) -> list[Reading]:
    """One poll's readings: gateway timestamp ``start_ns + poll * interval_ms``; ~0.5 % BAD (not counters)."""
    ts = start_ns + poll * interval_ms * 1_000_000
    vals = values(tags, poll, interval_ms, seed=seed)
    bad_rng = _rng(seed + 1, poll)
    good, bad = Quality.GOOD, Quality.BAD
    out: list[Reading] = []
    for tag, value in zip(tags, vals, strict=True):
        if bad_rng.random() < bad_fraction and tag.kind != "counter":
            status = BAD_STATUSES[(tag.index + poll) % len(BAD_STATUSES)]
            out.append(Reading(source, tag.name, None, bad, ts, None, status))
        else:
            out.append(Reading(source, tag.name, value, good, ts))
    return out


_REGISTERS = {"float32": ("float32", 2), "int32": ("int32", 2), "counter": ("uint32", 2), "bool": ("bool", 1)}


def holding_registers(tags: Sequence[Tag], start: int = 0) -> list[RegisterPoint]:
    """Each tag's holding-register address, contiguous from ``start`` in tag order (see the module doc)."""
    points, address = [], start
    for tag in tags:
        data_type, count = _REGISTERS.get(tag.kind, ("string", STRING_REGISTERS))
        points.append(RegisterPoint(tag, address, data_type, count))
        address += count
    if address > 65536:
        msg = f"{len(tags)} tags need {address - start} registers from {start}: past address 65535"
        raise ValueError(msg)
    return points


def register_count(points: Sequence[RegisterPoint]) -> int:
    """Registers from address 0 to the end of the last point."""
    return points[-1].address + points[-1].registers if points else 0


def register_image(points: Sequence[RegisterPoint], vals: Sequence[Value], size: int | None = None) -> list[int]:
    """The holding registers (address 0 up) that serve ``vals``: big-endian bytes, high word first."""
    image = [0] * (size if size is not None else register_count(points))
    pack_f, pack_i, pack_u = struct.Struct(">f").pack, struct.Struct(">i").pack, struct.Struct(">I").pack
    for point, value in zip(points, vals, strict=True):
        a, data_type = point.address, point.data_type
        if data_type == "float32":
            raw = pack_f(float(value or 0.0))
        elif data_type == "int32":
            raw = pack_i(int(value or 0))
        elif data_type == "uint32":
            raw = pack_u(int(value or 0))
        elif data_type == "bool":
            image[a] = 1 if value else 0
            continue
        else:
            raw = str(value or "").encode("latin-1", "replace")[: 2 * point.registers].ljust(2 * point.registers, b"\0")
        for k in range(0, len(raw), 2):
            image[a + k // 2] = (raw[k] << 8) | raw[k + 1]
    return image


class RoundedReference:
    """REFERENCE ONLY, not plant-like: the data bench.publish used before this module (500 aliases
    ``plant.temp000`` ... sampled every 100 ms, a bounded random walk rounded to 4 decimals such as 23.4567,
    0-2 ms timestamp jitter). Use it to compare with figures recorded before the realistic dataset."""

    LABEL = "rounded reference (4-decimal random walk, short aliases; not plant-like)"
    _KINDS = ("temp", "pressure", "flow", "speed", "level")
    _POOL = 1 << 16

    def __init__(self, aliases: int = 500, start_ns: int = 0, source: str = "plant") -> None:
        rng = random.Random(7)
        self.aliases, self.start_ns, self.source = aliases, start_ns, source
        self.names = [f"{source}.{self._KINDS[i % len(self._KINDS)]}{i:03d}" for i in range(aliases)]
        v, pool = 23.0, []
        for _ in range(self._POOL):
            v = min(35.0, max(15.0, v + rng.gauss(0, 0.02)))
            pool.append(round(v, 4))
        self.pool = pool
        self.jitter_ns = [rng.randrange(2_000_000) for _ in range(4096)]

    def readings(self, first: int, count: int, sample_ns: int = DEFAULT_INTERVAL_MS * 1_000_000) -> list[Reading]:
        """Reading ``k`` is alias ``k % aliases`` at tick ``k // aliases``."""
        out = []
        for k in range(first, first + count):
            tick, alias = divmod(k, self.aliases)
            ts = self.start_ns + tick * sample_ns + self.jitter_ns[k & 4095]
            value = self.pool[(tick + alias * 1031) % self._POOL]
            out.append(Reading(self.source, self.names[alias], value, Quality.GOOD, ts))
        return out
