"""``wheels.lock.json``: the exact dependency wheels the component ships, per target, with their hashes.

The build never resolves against whatever PyPI serves today: it downloads exactly the files this lock names
(``pip download --no-deps --require-hashes``), so two builds of one commit ship the same bytes, and a file
PyPI would now serve differently fails the build instead of changing the component.

Format (JSON, keys sorted, written only by ``write_lock``)::

    {"requirements": [the runtime dependencies of pyproject.toml the lock was made for],
     "targets": {"cp311-x86_64": [wheel file, ...], ...},          # what a device of that target installs
     "wheels": {wheel file: {"sha256": hex, "requires_dist": [...], "requires_python": str}}}

``requires_dist`` / ``requires_python`` are the wheel's own METADATA, kept so the closure of each target can
be checked offline (tests/unit/test_component_wheels.py builds stand-in wheels from them).

- ``write_lock(root, cache)`` (``build_component.py --lock``, needs PyPI): ``pip download`` per target into
  ``cache``, then ``targets.resolve`` with the target's own markers picks each target's files.
- ``read_lock(root)`` / ``lock_problems(lock, requirements)``: the lock, and why it does not fit
  pyproject.toml or ``TARGETS`` ([] when it does).
- ``fetch(lock, cache, targets, offline)``: every file of those targets in ``cache`` with its locked
  sha256, downloading only what is missing (``offline``: a BuildError instead).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import parse_wheel_filename

from .errors import BuildError
from .pip import pip
from .targets import TARGETS, Target, WheelInfo, resolve, wheel_info

LOCK_PATH = "scripts/component_build/wheels.lock.json"
RELOCK = "python scripts/build_component.py --lock"


@dataclass(frozen=True, slots=True)
class LockedWheel:
    sha256: str
    requires_dist: tuple[str, ...]
    requires_python: str


@dataclass(frozen=True, slots=True)
class Lock:
    requirements: tuple[str, ...]
    targets: dict[str, tuple[str, ...]]
    wheels: dict[str, LockedWheel]

    def infos(self) -> list[WheelInfo]:
        out = []
        for file, wheel in self.wheels.items():
            name, version, _, _ = parse_wheel_filename(file)
            out.append(WheelInfo(file, name, version, wheel.requires_dist, wheel.requires_python))
        return out


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_lock(root: Path) -> Lock:
    path = root / LOCK_PATH
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return Lock(
            tuple(doc["requirements"]),
            {key: tuple(files) for key, files in doc["targets"].items()},
            {
                file: LockedWheel(w["sha256"], tuple(w["requires_dist"]), w["requires_python"])
                for file, w in doc["wheels"].items()
            },
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BuildError(f"cannot read {path} ({exc}): make it with `{RELOCK}`") from exc


def lock_problems(lock: Lock, requirements: list[str]) -> list[str]:
    problems = []
    if list(lock.requirements) != requirements:
        problems.append(
            f"{LOCK_PATH} was made for other requirements than pyproject.toml's: run `{RELOCK}` "
            f"(locked {list(lock.requirements)}, pyproject {requirements})"
        )
    wanted = {t.key for t in TARGETS}
    if set(lock.targets) != wanted:
        problems.append(f"{LOCK_PATH} has targets {sorted(lock.targets)}, the build ships {sorted(wanted)}: `{RELOCK}`")
    problems += [
        f"{LOCK_PATH}: {key} names {file}, which has no entry in 'wheels'"
        for key, files in lock.targets.items()
        for file in files
        if file not in lock.wheels
    ]
    return problems


def write_lock(root: Path, cache: Path, requirements: list[str]) -> Lock:
    """Resolve ``requirements`` for every target against PyPI and write the lock (needs the network)."""
    cache.mkdir(parents=True, exist_ok=True)
    # A fresh folder: what pip resolves today, not older versions the cache still holds.
    with tempfile.TemporaryDirectory(dir=cache.parent) as fresh:
        for target in TARGETS:
            pip("download", "--quiet", "--dest", fresh, *target.pip_options(), *requirements)
        infos = [wheel_info(path) for path in sorted(Path(fresh).glob("*.whl"))]
        for info in infos:
            shutil.copyfile(Path(fresh) / info.file, cache / info.file)
    targets: dict[str, tuple[str, ...]] = {}
    for target in TARGETS:
        files, problems = resolve(infos, requirements, target)
        if problems:
            raise BuildError("PyPI has no complete wheel set: " + "; ".join(problems))
        targets[target.key] = tuple(files)
    used = {file for files in targets.values() for file in files}
    by_file = {info.file: info for info in infos}
    lock = Lock(
        tuple(requirements),
        targets,
        {
            file: LockedWheel(sha256(cache / file), by_file[file].requires_dist, by_file[file].requires_python)
            for file in sorted(used)
        },
    )
    doc = {
        "requirements": list(lock.requirements),
        "targets": {key: list(files) for key, files in lock.targets.items()},
        "wheels": {
            file: {"requires_dist": list(w.requires_dist), "requires_python": w.requires_python, "sha256": w.sha256}
            for file, w in lock.wheels.items()
        },
    }
    (root / LOCK_PATH).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return lock


def fetch(lock: Lock, cache: Path, targets: tuple[Target, ...], offline: bool) -> list[Path]:
    """Every locked file of ``targets``, in ``cache`` and checked against its sha256; downloads what is missing."""
    cache.mkdir(parents=True, exist_ok=True)
    wanted = sorted({file for t in targets for file in lock.targets[t.key]})

    def good(file: str) -> bool:
        path = cache / file
        return path.is_file() and sha256(path) == lock.wheels[file].sha256

    for target in targets:
        missing = [f for f in lock.targets[target.key] if not good(f)]
        if not missing:
            continue
        if offline:
            raise BuildError(f"--offline, and {cache} lacks {', '.join(missing)} ({target.key})")
        for file in missing:
            (cache / file).unlink(missing_ok=True)  # a file of another content would stop pip
        lines = []
        for file in missing:
            name, version, _, _ = parse_wheel_filename(file)
            lines.append(f"{name}=={version} --hash=sha256:{lock.wheels[file].sha256}\n")
        with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as req:
            req.writelines(lines)
            req.flush()
            options = target.pip_options()
            pip("download", "--quiet", "--no-deps", "--require-hashes", "--dest", str(cache), *options, "-r", req.name)
    bad = [f for f in wanted if not good(f)]
    if bad:
        raise BuildError(f"the download did not give the locked files {', '.join(bad)}: PyPI changed? `{RELOCK}`")
    return [cache / f for f in wanted]
