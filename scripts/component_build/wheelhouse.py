"""``wheels/`` of the component: what the device installs from, since plants often have no PyPI.

- ``stage_wheels(root, dest, ...)`` empties ``dest`` (a stale wheel could win pip's resolution on the
  device), then puts there the project's own wheel and the dependency wheels of every target: the files
  wheels.lock.json names, from the download cache (``lock.fetch``), or, for tests, every wheel of a given
  ``wheelhouse`` directory. Then, per target, the set must be complete, or BuildError (a device must never
  find out at Install time): ``targets.resolve`` with the target's own markers, and pip's own dry run
  (``pip install --dry-run --no-index --find-links dest`` for that interpreter and platform).
- ``build_project_wheel(root, dest)``: the project's wheel (PEP 427, pure Python, ``py3-none-any``), built
  here from pyproject.toml (the packages setuptools' ``packages.find`` would pick, metadata, console
  scripts): no build backend to download, and the same bytes for the same sources (fixed entry dates).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import re
import shutil
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import BuildError
from .lock import fetch, lock_problems, read_lock
from .pip import pip
from .targets import TARGETS, Target, resolve, wheel_info

# Fixed timestamp for zip entries (the earliest a zip can hold): same sources, same bytes.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def pip_dry_run(wheels: Path, requirement: str, target: Target) -> None:
    """pip's own check, as the device will install: ``requirement`` from ``wheels`` alone, for ``target``."""
    with tempfile.TemporaryDirectory() as scratch:
        pip(
            "install",
            "--quiet",
            "--dry-run",
            "--ignore-installed",
            "--no-index",
            "--find-links",
            str(wheels),
            "--target",
            scratch,
            *target.pip_options(),
            requirement,
        )


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _package_files(root: Path, include: list[str]) -> Iterator[Path]:
    """Files of the packages setuptools' ``packages.find`` would pick: directories with ``__init__.py`` whose
    dotted name matches an ``include`` pattern, below a top-level one that does."""

    def walk(directory: Path, dotted: str) -> Iterator[Path]:
        if not (directory / "__init__.py").is_file() or not any(fnmatch.fnmatch(dotted, p) for p in include):
            return
        for path in sorted(directory.iterdir()):
            if path.is_dir():
                if path.name != "__pycache__":
                    yield from walk(path, f"{dotted}.{path.name}")
            elif path.suffix != ".pyc":
                yield path

    for top in sorted(root.iterdir()):
        if top.is_dir() and top.name.isidentifier():
            yield from walk(top, top.name)


def wheel_metadata(project: Mapping[str, Any]) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project.get('description', '')}",
    ]
    licence = project.get("license")  # an SPDX string (PEP 639), or the older {text = ...} table
    text = licence if isinstance(licence, str) else (licence or {}).get("text")
    if text:
        lines.append(f"License: {text}")
    lines += [f"Classifier: {c}" for c in project.get("classifiers", [])]
    if "requires-python" in project:
        lines.append(f"Requires-Python: {project['requires-python']}")
    lines += [f"Requires-Dist: {req}" for req in project.get("dependencies", [])]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        for req in reqs:
            spec, _, marker = req.partition(";")
            condition = f'({marker.strip()}) and extra == "{extra}"' if marker else f'extra == "{extra}"'
            lines.append(f"Requires-Dist: {spec.strip()}; {condition}")
    return "\n".join(lines) + "\n"


def build_project_wheel(root: Path, dest: Path) -> Path:
    """The project's wheel (PEP 427), from pyproject.toml: its packages, metadata and console scripts."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    include = pyproject.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {}).get("include", ["*"])
    dist = re.sub(r"[-_.]+", "_", project["name"]).lower()
    info = f"{dist}-{project['version']}.dist-info"
    files: list[tuple[str, bytes]] = [
        (path.relative_to(root).as_posix(), path.read_bytes()) for path in _package_files(root, include)
    ]
    if not files:
        raise BuildError(f"no package matching {include} under {root}")
    scripts = project.get("scripts", {})
    files.append((f"{info}/METADATA", wheel_metadata(project).encode()))
    files.append(
        (
            f"{info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: build_component.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
    )
    if scripts:
        entry_points = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())
        files.append((f"{info}/entry_points.txt", entry_points.encode()))
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files) + f"{info}/RECORD,,\n"
    files.append((f"{info}/RECORD", record.encode()))
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{dist}-{project['version']}-py3-none-any.whl"
    # Stored, not deflated: deflate's output depends on the zlib build, so a stored wheel is the same bytes on
    # every build machine (0.9 MB instead of 0.35 MB, in a 41 MB artifact).
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files:
            entry = zipfile.ZipInfo(name, ZIP_DATE)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_STORED
            zf.writestr(entry, data)
    return wheel


def runtime_requirements(root: Path) -> tuple[str, str, list[str]]:
    """(distribution name, version, dependencies) from pyproject.toml."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["name"], project["version"], list(project.get("dependencies", []))


def stage_wheels(
    root: Path,
    dest: Path,
    *,
    cache: Path,
    offline: bool = False,
    wheelhouse: Path | None = None,
    targets: tuple[Target, ...] = TARGETS,
) -> list[Path]:
    """Fill ``dest`` afresh with every wheel ``targets`` need and check each target; returns the wheels."""
    name, version, requirements = runtime_requirements(root)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if wheelhouse is not None:
        sources = sorted(wheelhouse.glob("*.whl"))
    else:
        lock = read_lock(root)
        problems = lock_problems(lock, requirements)
        if problems:
            raise BuildError("; ".join(problems))
        sources = fetch(lock, cache, targets, offline)
    for wheel in sources:
        shutil.copyfile(wheel, dest / wheel.name)
    own = build_project_wheel(root, dest)
    infos = [wheel_info(path) for path in sorted(dest.glob("*.whl"))]
    problems = []
    for target in targets:
        problems += resolve(infos, [f"{name}=={version}"], target)[1]
    if problems:
        raise BuildError("the wheel set is incomplete: " + "; ".join(problems))
    for target in targets:
        pip_dry_run(dest, f"{name}=={version}", target)
    return sorted([own, *(dest / w.name for w in sources)])
