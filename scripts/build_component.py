# ruff: noqa: INP001, T201 - a command in scripts/ (it prints), imported by the tests as a namespace module
"""Build the Greengrass component the way ``gdk component build`` (gdk CLI 1.6.2, zip build) does.

    python scripts/build_component.py                 # `make build`: wheels, then gdk's zip build
    python scripts/build_component.py --wheels-only   # then `gdk component build` gives the same output
    python scripts/build_component.py --wheelhouse D  # dependency wheels from D, no download (offline)

1. gdk-config.json is read and checked (``component_build.rules``).
2. ``wheels/``: the project's own wheel and its runtime dependencies for CPython 3.11 on manylinux x86_64
   and aarch64, then a dry-run install from ``wheels/`` alone per architecture (``component_build.wheelhouse``).
3. gdk's zip build and recipe transform into ``zip-build/`` and ``greengrass-build/``, the recipe checked
   (size, schema) as gdk checks it (``component_build.gdk_layout``). ``--wheels-only`` stops before this.

This file is the command; the steps live in ``scripts/component_build/``. The names the tests use
(``from scripts import build_component as build``) are re-exported here.

Exit status 0 on success, 1 with the reason on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run as `python scripts/build_component.py`: sys.path has scripts/, not the project root
    sys.path.insert(0, str(ROOT))

from scripts.component_build.errors import BuildError  # noqa: E402 - needs the path set above
from scripts.component_build.gdk_layout import excluded_paths, gdk_build, transform_recipe, zip_build  # noqa: E402
from scripts.component_build.rules import (  # noqa: E402
    Component,
    gdk_config_problems,
    read_component,
    read_recipe,
    recipe_problems,
)
from scripts.component_build.wheelhouse import (  # noqa: E402
    ARCHITECTURES,
    PYTHON_VERSION,
    build_project_wheel,
    build_wheels,
    runtime_requirements,
)

__all__ = [
    "ARCHITECTURES",
    "PYTHON_VERSION",
    "ROOT",
    "BuildError",
    "Component",
    "build_project_wheel",
    "build_wheels",
    "excluded_paths",
    "gdk_build",
    "gdk_config_problems",
    "main",
    "read_component",
    "read_recipe",
    "recipe_problems",
    "runtime_requirements",
    "transform_recipe",
    "zip_build",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=ROOT, help="project directory (default: this checkout)")
    parser.add_argument("--wheels-only", action="store_true", help="fill wheels/ and stop (then run gdk yourself)")
    parser.add_argument("--wheelhouse", type=Path, help="take dependency wheels from here instead of downloading")
    parser.add_argument("--arch", action="append", choices=ARCHITECTURES, help="only these (default: all)")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    try:
        component = read_component(root)
        wheels = build_wheels(root, args.wheelhouse, tuple(args.arch or ARCHITECTURES))
        print(f"{wheels}: {len(list(wheels.glob('*.whl')))} wheels, {_size(wheels)}")
        if args.wheels_only:
            return 0
        recipe, artifact = gdk_build(root, component)
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    print(f"{recipe.relative_to(root)} ({recipe.stat().st_size} bytes)")
    print(f"{artifact.relative_to(root)} ({_size(artifact)})")
    return 0


def _size(path: Path) -> str:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return f"{total / 1e6:.1f} MB"


if __name__ == "__main__":
    sys.exit(main())
