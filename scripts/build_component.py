# ruff: noqa: INP001, T201 - a command in scripts/ (it prints), imported by the tests as a namespace module
"""Build the Greengrass component: what ``gdk component build`` runs (gdk-config.json, ``custom`` build).

    gdk component build                               # runs: python3 scripts/build_component.py
    make build                                        # the same, with the project's venv
    python scripts/build_component.py --offline       # no download: every locked wheel must be in the cache
    python scripts/build_component.py --lock          # re-resolve wheels.lock.json against PyPI (then build)

1. gdk-config.json is read and checked (``component_build.rules``).
2. ``build/component/wheels/``: the project's own wheel and, for every target (CPython 3.11, 3.12, 3.13 on
   manylinux x86_64 and aarch64: ``component_build.targets``), the dependency wheels that
   ``scripts/component_build/wheels.lock.json`` names, downloaded once into ``build/wheel-cache/`` and
   checked against their sha256 (``component_build.lock``); then each target's set must be complete
   (``component_build.wheelhouse``).
3. ``greengrass-build/recipes/recipe.yaml`` and ``greengrass-build/artifacts/<name>/<version>/<zip>.zip``
   (``component_build.gdk_layout``): what ``gdk component publish`` uploads and registers. The zip is
   reproducible: the same commit gives the same bytes.

gdk runs this with the ``python3`` on PATH (3.11 or newer). If that Python lacks PyYAML, packaging or pip
(gdk installed with pipx, a bare system Python), the build first makes itself a venv in
``build/build-venv/`` with them, from the package index, and runs again there.

This file is the command; the steps live in ``scripts/component_build/``. The names the tests use
(``from scripts import build_component as build``) are re-exported here.

Exit status 0 on success, 1 with the reason on stderr otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_VENV = ROOT / "build" / "build-venv"
_NEEDED = ("yaml", "packaging", "pip")


def _ensure_build_environment() -> None:
    """Run again in ``build/build-venv`` when this Python lacks what the build imports."""
    if sys.version_info < (3, 11):  # noqa: UP036 - gdk may start us with any python3
        sys.exit(f"build failed: the build needs Python 3.11 or newer as python3 (this is {sys.version.split()[0]})")
    missing = [m for m in _NEEDED if importlib.util.find_spec(m) is None]
    if not missing:
        return
    if Path(sys.prefix) == BUILD_VENV:
        sys.exit(f"build failed: {BUILD_VENV} lacks {missing}: delete it and build again")
    print(f"{sys.executable} lacks {', '.join(missing)}: making {BUILD_VENV}", file=sys.stderr)
    python = BUILD_VENV / "bin" / "python"
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(BUILD_VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "PyYAML>=6", "packaging>=24"],
    ]
    for step in steps:
        if subprocess.run(step, check=False).returncode != 0:  # noqa: S603 - fixed arguments
            sys.exit(
                f"build failed: {' '.join(step)} failed. Install python3-venv (Debian, Ubuntu), or PyYAML and "
                "packaging into this Python (python3 -m pip install PyYAML packaging)"
            )
    os.execv(python, [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])  # noqa: S606 - our own venv


if __name__ == "__main__":
    _ensure_build_environment()
if not __package__:  # run as `python scripts/build_component.py`: sys.path has scripts/, not the project root
    sys.path.insert(0, str(ROOT))

from scripts.component_build.errors import BuildError  # noqa: E402 - needs the path set above
from scripts.component_build.gdk_layout import (  # noqa: E402
    artifact_uris,
    deterministic_zip,
    transform_recipe,
    write_component,
)
from scripts.component_build.lock import LOCK_PATH, Lock, lock_problems, read_lock, write_lock  # noqa: E402
from scripts.component_build.rules import (  # noqa: E402
    BUILD_COMMAND,
    Component,
    gdk_config_problems,
    read_component,
    read_recipe,
    recipe_problems,
)
from scripts.component_build.targets import (  # noqa: E402
    ARCHITECTURES,
    GREENGRASS_ARCHITECTURES,
    PYTHON_VERSIONS,
    TARGETS,
    Target,
    resolve,
    wheel_info,
)
from scripts.component_build.wheelhouse import (  # noqa: E402
    build_project_wheel,
    pip_dry_run,
    runtime_requirements,
    stage_wheels,
)

__all__ = [
    "ARCHITECTURES",
    "BUILD_COMMAND",
    "GREENGRASS_ARCHITECTURES",
    "LOCK_PATH",
    "PYTHON_VERSIONS",
    "ROOT",
    "TARGETS",
    "BuildError",
    "Component",
    "Lock",
    "Target",
    "artifact_uris",
    "build",
    "build_project_wheel",
    "deterministic_zip",
    "gdk_config_problems",
    "lock_problems",
    "main",
    "pip_dry_run",
    "read_component",
    "read_lock",
    "read_recipe",
    "recipe_problems",
    "resolve",
    "runtime_requirements",
    "stage_wheels",
    "transform_recipe",
    "wheel_info",
    "write_component",
]

CACHE = "build/wheel-cache"
STAGE = "build/component"


def build(
    root: Path, *, offline: bool = False, wheelhouse: Path | None = None, targets: tuple[Target, ...] = TARGETS
) -> tuple[Path, Path]:
    """The whole build in ``root``: (``greengrass-build/recipes/recipe.yaml``, the artifact zip)."""
    component = read_component(root)
    stage = root / STAGE
    stage_wheels(root, stage / "wheels", cache=root / CACHE, offline=offline, wheelhouse=wheelhouse, targets=targets)
    return write_component(root, component, stage)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=ROOT, help="project directory (default: this checkout)")
    parser.add_argument("--offline", action="store_true", help="download nothing: the cache must hold every wheel")
    parser.add_argument("--lock", action="store_true", help=f"resolve {LOCK_PATH} again against PyPI first")
    parser.add_argument("--wheelhouse", type=Path, help="dependency wheels from here, not the lock (tests)")
    parser.add_argument("--target", action="append", choices=[t.key for t in TARGETS], help="only these")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    targets = tuple(t for t in TARGETS if not args.target or t.key in args.target)
    started = time.monotonic()
    try:
        if args.lock:
            lock = write_lock(root, root / CACHE, runtime_requirements(root)[2])
            print(f"{LOCK_PATH}: {len(lock.wheels)} wheels for {', '.join(lock.targets)}")
        recipe, artifact = build(root, offline=args.offline, wheelhouse=args.wheelhouse, targets=targets)
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    wheels = len(list((root / STAGE / "wheels").glob("*.whl")))
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    print(f"{recipe.relative_to(root)} ({recipe.stat().st_size} bytes)")
    print(f"{artifact.relative_to(root)} ({artifact.stat().st_size / 1e6:.1f} MB, {wheels} wheels, sha256 {digest})")
    print(f"for {', '.join(t.key for t in targets)} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
