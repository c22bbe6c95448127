"""The devices the component ships wheels for, and the one check that a wheel set serves each of them.

- ``TARGETS``: CPython 3.11, 3.12 and 3.13 on manylinux x86_64 and aarch64, wheels needing at most
  glibc 2.35 (``manylinux_2_35``: Ubuntu 22.04). 32-bit ARM (armv7l) is not shipped: awscrt, cffi and
  PyYAML publish no armv7l wheel (docs/deployment.md).
- ``Target.pip_options()``: what ``pip download`` / ``pip install --dry-run`` need to act for a target
  other than the machine pip runs on.
- ``resolve(wheels, requirements, target)``: the wheels a device of ``target`` installs for
  ``requirements`` (the newest compatible version of each, as pip picks), following every dependency with
  its environment markers evaluated for the *target*; every requirement no wheel meets is a problem.
  pip evaluates markers for the machine it runs on (a 3.11 build host would drop a dependency marked
  ``python_version >= "3.13"``), so this check, not pip's dry run alone, proves a set complete.

Pure: reads wheel files, writes nothing.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import Version

PYTHON_VERSIONS = ("3.11", "3.12", "3.13")
ARCHITECTURES = ("x86_64", "aarch64")
# What the nucleus reports as the platform's architecture (the recipe's Platform.architecture).
GREENGRASS_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "aarch64"}
# Newest glibc a wheel may need: Ubuntu 22.04 has 2.35, Debian 12 / Raspberry Pi OS bookworm 2.36.
GLIBC_MAX_MINOR = 35


@dataclass(frozen=True, slots=True)
class Target:
    python: str  # "3.12"
    arch: str  # "aarch64"

    @property
    def key(self) -> str:
        """``cp312-aarch64``: how the lock file and messages name the target."""
        return f"cp{self.python.replace('.', '')}-{self.arch}"

    @property
    def platforms(self) -> list[str]:
        """pip's ``--platform`` values, newest first: pip does not widen ``manylinux_2_35`` to older tags."""
        newest = [f"manylinux_2_{minor}_{self.arch}" for minor in range(GLIBC_MAX_MINOR, 16, -1)]
        return [*newest, f"manylinux2014_{self.arch}"]

    def pip_options(self) -> list[str]:
        platforms = [arg for p in self.platforms for arg in ("--platform", p)]
        abi = self.key.split("-")[0]
        return [
            "--only-binary=:all:",
            *platforms,
            "--python-version",
            self.python,
            "--implementation",
            "cp",
            "--abi",
            abi,
        ]

    def supports(self, wheel: str) -> bool:
        """Whether a device of this target can install the wheel file named ``wheel``."""
        _, _, _, tags = parse_wheel_filename(wheel)
        return not tags.isdisjoint(_supported_tags(self))

    def markers(self, extra: str = "") -> dict[str, str]:
        """The marker environment of a device of this target (PEP 508)."""
        full = f"{self.python}.0"
        return {
            "implementation_name": "cpython",
            "implementation_version": full,
            "os_name": "posix",
            "platform_machine": self.arch,
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": "Linux",
            "platform_version": "",
            "python_full_version": full,
            "python_version": self.python,
            "sys_platform": "linux",
            "extra": extra,
        }


@cache
def _supported_tags(target: Target) -> frozenset[Tag]:
    version = tuple(int(p) for p in target.python.split("."))
    abi = f"cp{version[0]}{version[1]}"
    return frozenset(
        [
            *cpython_tags(version, abis=[abi], platforms=target.platforms),
            *compatible_tags(version, interpreter=abi, platforms=target.platforms),
        ]
    )


TARGETS = tuple(Target(python, arch) for python in PYTHON_VERSIONS for arch in ARCHITECTURES)


@dataclass(frozen=True, slots=True)
class WheelInfo:
    """What a resolver needs from one wheel file."""

    file: str
    name: NormalizedName
    version: Version
    requires_dist: tuple[str, ...]
    requires_python: str


def wheel_info(path: Path) -> WheelInfo:
    """Name, version and dependencies of the wheel at ``path``, from its METADATA."""
    name, version, _, _ = parse_wheel_filename(path.name)
    with zipfile.ZipFile(path) as zf:
        meta = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if len(meta) != 1:
            msg = f"{path.name}: expected one .dist-info/METADATA, found {len(meta)}"
            raise ValueError(msg)
        headers = Parser().parsestr(zf.read(meta[0]).decode("utf-8"), headersonly=True)
    return WheelInfo(
        path.name,
        name,
        version,
        tuple(headers.get_all("Requires-Dist") or ()),
        headers.get("Requires-Python") or "",
    )


def resolve(wheels: list[WheelInfo], requirements: list[str], target: Target) -> tuple[list[str], list[str]]:
    """(the wheel files a ``target`` device installs for ``requirements``, the problems); complete when no problem."""
    by_name: dict[NormalizedName, list[WheelInfo]] = {}
    for wheel in wheels:
        if target.supports(wheel.file) and (
            not wheel.requires_python or SpecifierSet(wheel.requires_python).contains(f"{target.python}.0")
        ):
            by_name.setdefault(wheel.name, []).append(wheel)
    chosen: dict[NormalizedName, WheelInfo] = {}
    problems: list[str] = []
    done: set[tuple[NormalizedName, frozenset[str]]] = set()
    queue: list[tuple[Requirement, str]] = [(Requirement(r), "the project") for r in requirements]
    while queue:
        req, wanted_by = queue.pop(0)
        name, extras = canonicalize_name(req.name), frozenset(req.extras)
        if name in chosen:
            if not req.specifier.contains(chosen[name].version, prereleases=True):
                problems.append(f"{target.key}: {wanted_by} needs {req}, the set has {chosen[name].file}")
            if (name, extras) in done:
                continue
        else:
            candidates = [w for w in by_name.get(name, []) if req.specifier.contains(w.version, prereleases=True)]
            if not candidates:
                problems.append(f"{target.key}: no wheel for {req} (needed by {wanted_by})")
                continue
            chosen[name] = max(candidates, key=lambda w: w.version)
        done.add((name, extras))
        for text in chosen[name].requires_dist:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate(target.markers(e)) for e in ("", *sorted(extras))):
                queue.append((dep, chosen[name].file))
    return sorted(w.file for w in chosen.values()), problems
