"""``wheels/``: what the device installs from, since plants often have no PyPI.

- ``build_wheels(root, wheelhouse, architectures)`` empties ``root/wheels`` (a stale wheel could win pip's
  resolution on the device), then puts there the project's own wheel and the runtime dependencies of
  pyproject.toml as binary wheels for CPython 3.11 on manylinux x86_64 and aarch64 (``pip download
  --only-binary=:all: --platform ... --python-version 3.11 --implementation cp``), or copies them from
  ``wheelhouse`` (offline). Then, per architecture, a dry-run install from ``wheels/`` alone must resolve,
  or BuildError: a device never finds out at Install time. pip evaluates dependency markers against the
  machine that runs it, not the target; none of today's dependencies carries an architecture marker.
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
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import BuildError

WHEELS_DIR = "wheels"
PYTHON_VERSION = "3.11"
ARCHITECTURES = ("x86_64", "aarch64")
# Newest glibc a wheel may need: Ubuntu 22.04 has 2.35, Debian 12 / Raspberry Pi OS bookworm 2.36.
GLIBC_MAX_MINOR = 35
# Fixed timestamp for the project wheel's entries (the earliest a zip can hold): same sources, same bytes.
_WHEEL_DATE = (1980, 1, 1, 0, 0, 0)


def manylinux_platforms(arch: str) -> list[str]:
    """pip's ``--platform`` values for ``arch``: pip does not widen ``manylinux_2_35`` to older tags itself."""
    return [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MAX_MINOR, 16, -1)] + [f"manylinux2014_{arch}"]


def _target_options(arch: str) -> list[str]:
    platforms = [arg for p in manylinux_platforms(arch) for arg in ("--platform", p)]
    return [
        "--only-binary=:all:",
        *platforms,
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        "--abi",
        "cp" + PYTHON_VERSION.replace(".", ""),
    ]


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)  # noqa: S603 - our own arguments
    if result.returncode != 0:
        raise BuildError(f"{' '.join(cmd[2:])} failed:\n{result.stdout}{result.stderr}")


def download_dependencies(requirements: list[str], dest: Path, arch: str) -> None:
    _pip("download", "--quiet", "--dest", str(dest), *_target_options(arch), *requirements)


def check_wheelhouse(wheels: Path, requirement: str, arch: str) -> None:
    """A dry-run install from ``wheels`` alone, as the device will do it: every dependency has a wheel."""
    with tempfile.TemporaryDirectory() as target:
        _pip(
            "install",
            "--quiet",
            "--dry-run",
            "--ignore-installed",
            "--no-index",
            "--find-links",
            str(wheels),
            "--target",
            target,
            *_target_options(arch),
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
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            entry = zipfile.ZipInfo(name, _WHEEL_DATE)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, data)
    return wheel


def runtime_requirements(root: Path) -> tuple[str, str, list[str]]:
    """(distribution name, version, dependencies) from pyproject.toml."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["name"], project["version"], list(project.get("dependencies", []))


def build_wheels(root: Path, wheelhouse: Path | None = None, architectures: tuple[str, ...] = ARCHITECTURES) -> Path:
    """Fill ``root/wheels`` afresh (stale wheels could win pip's resolution on the device) and check it."""
    name, version, requirements = runtime_requirements(root)
    wheels = root / WHEELS_DIR
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir()
    build_project_wheel(root, wheels)
    if wheelhouse is not None:
        for wheel in sorted(wheelhouse.glob("*.whl")):
            shutil.copy2(wheel, wheels)
    else:
        for arch in architectures:
            download_dependencies(requirements, wheels, arch)
    for arch in architectures:
        check_wheelhouse(wheels, f"{name}=={version}", arch)
    return wheels
