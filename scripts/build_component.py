# ruff: noqa: INP001, T201 - a command in scripts/ (it prints), imported by the tests as a namespace module
"""Build the Greengrass component the way ``gdk component build`` (gdk CLI 1.6.2, zip build) does.

    python scripts/build_component.py                 # `make build`: wheels, then gdk's zip build
    python scripts/build_component.py --wheels-only   # then `gdk component build` gives the same output
    python scripts/build_component.py --wheelhouse D  # dependency wheels from D, no download (offline)

1. ``wheels/``: what the device installs from, since plants often have no PyPI. The project's own wheel
   (pure Python, ``py3-none-any``, built here from pyproject.toml: no build backend to download, same
   bytes for the same sources) and the runtime dependencies of pyproject.toml as binary wheels for
   CPython 3.11 on manylinux x86_64 and aarch64 (``pip download --only-binary=:all: --platform ...
   --python-version 3.11 --implementation cp``). Then, per architecture, a dry-run install from
   ``wheels/`` alone must resolve, or the build fails: a device never finds out at Install time.
   pip evaluates dependency markers against the machine that runs it, not the target; none of today's
   dependencies carries an architecture marker.
2. gdk's zip build: the project minus ``gdk-config.json``, ``greengrass-build/``, ``recipe.yaml`` and the
   ``excludes`` globs (gdk's ``glob.glob(root/pattern, recursive=True)``) is copied to
   ``zip-build/<folder name>/`` (left behind, as gdk does) and zipped without a wrapper folder as
   ``zip-build/<zip_name>.zip``.
3. gdk's recipe transform: ``greengrass-build/recipes/recipe.yaml`` is the recipe with ``ComponentName``,
   ``ComponentVersion`` and ``ComponentPublisher`` overwritten from gdk-config.json and every ``s3://``
   artifact whose file was built rewritten to ``s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/<file>``,
   re-dumped with ``yaml.safe_dump(sort_keys=False)``; the zip goes to
   ``greengrass-build/artifacts/<name>/<version>/``. The checks gdk makes (input recipe <= 16,000 bytes,
   its recipe schema) run here too; an artifact that was not built is an error (gdk would look on S3).

Exit status 0 on success, 1 with the reason on stderr otherwise.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
WHEELS_DIR = "wheels"
PYTHON_VERSION = "3.11"
ARCHITECTURES = ("x86_64", "aarch64")
# Newest glibc a wheel may need: Ubuntu 22.04 has 2.35, Debian 12 / Raspberry Pi OS bookworm 2.36.
GLIBC_MAX_MINOR = 35
RECIPE_MAX_BYTES = 16_000
S3_PREFIX = "s3://"
BUILT_URI = "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION"
# gdk always leaves these out of the zip (at the project root), besides the configured excludes.
GDK_ALWAYS_EXCLUDED = ("gdk-config.json", "greengrass-build")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_COMPONENT_NAME = re.compile(r"^[a-zA-Z0-9-_.]+$")
# Fixed timestamp for the project wheel's entries (the earliest a zip can hold): same sources, same bytes.
_WHEEL_DATE = (1980, 1, 1, 0, 0, 0)


class BuildError(Exception):
    """The build cannot go on; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Component:
    """The one component of gdk-config.json."""

    name: str
    version: str
    author: str
    zip_name: str
    excludes: tuple[str, ...]
    bucket: str
    region: str

    @property
    def zip_file(self) -> str:
        return f"{self.zip_name}.zip"


def gdk_config_problems(doc: Any) -> list[str]:  # noqa: ANN401, C901 - raw JSON, one check per rule
    """What gdk's config schema (and its zip build) would refuse, plus what makes a zip build CI-dependent."""
    if not isinstance(doc, dict):
        return ["gdk-config.json must hold a JSON object"]
    problems = [f"unknown top-level key {key!r}" for key in doc if key not in {"component", "gdk_version", "test-e2e"}]
    if not isinstance(doc.get("gdk_version"), str):
        problems.append("gdk_version (a string) is required")
    components = doc.get("component")
    if not isinstance(components, dict) or len(components) != 1:
        return [*problems, "component must hold exactly one key: the component name"]
    ((name, comp),) = components.items()
    if not _COMPONENT_NAME.match(name) or len(name) > 128:  # noqa: PLR2004 - Greengrass limit
        problems.append(f"component name {name!r} must match [a-zA-Z0-9-_.]+ and be at most 128 characters")
    if not isinstance(comp, dict):
        return [*problems, f"component {name!r} must be an object"]
    problems += [
        f"component.{name}.{key} is required" for key in ("author", "version", "build", "publish") if key not in comp
    ]
    version = comp.get("version")
    if version is not None and (
        not isinstance(version, str) or not (_SEMVER.match(version) or version == "NEXT_PATCH")
    ):
        problems.append(f"version {version!r} must be a semantic version (major.minor.patch) or NEXT_PATCH")
    build = comp.get("build", {})
    if build.get("build_system") != "zip":
        problems.append(f"build.build_system must be 'zip' (is {build.get('build_system')!r})")
    options = build.get("options", {})
    zip_name = options.get("zip_name")
    if not isinstance(zip_name, str) or not zip_name:
        problems.append("build.options.zip_name is required: without it the zip is named after the checkout folder")
    elif zip_name.endswith(".zip"):
        problems.append(f"zip_name {zip_name!r} must not end with .zip (gdk would build {zip_name}.zip)")
    excludes = options.get("excludes")
    if not isinstance(excludes, list) or not excludes or not all(isinstance(e, str) and e for e in excludes):
        problems.append("build.options.excludes must be a non-empty list of globs (any option replaces gdk's defaults)")
    publish = comp.get("publish", {})
    if not isinstance(publish.get("bucket"), str) or not publish.get("bucket"):
        problems.append("publish.bucket is required")
    return problems


def read_component(root: Path) -> Component:
    path = root / "gdk-config.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot read {path}: {exc}") from exc
    problems = gdk_config_problems(doc)
    if problems:
        raise BuildError(f"{path}: " + "; ".join(problems))
    ((name, comp),) = doc["component"].items()
    if comp["version"] == "NEXT_PATCH":
        raise BuildError(f"{path}: set an explicit version (NEXT_PATCH needs gdk and AWS credentials)")
    options = comp["build"]["options"]
    return Component(
        name=name,
        version=comp["version"],
        author=comp["author"],
        zip_name=options["zip_name"],
        excludes=tuple(options["excludes"]),
        bucket=comp["publish"]["bucket"],
        region=comp["publish"].get("region", ""),
    )


# --- wheels ---------------------------------------------------------------------------------------------


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


# --- gdk: zip build and recipe transform ----------------------------------------------------------------


def excluded_paths(root: Path, patterns: tuple[str, ...]) -> set[str]:
    """gdk's ``generate_ignore_list_from_globs``: absolute path strings matched by ``root/<pattern>``."""
    matched: set[str] = set()
    for pattern in patterns:
        matched |= set(glob.glob(f"{root}{os.sep}{pattern}", recursive=True))  # noqa: PTH207 - as gdk does
    return matched


def zip_build(root: Path, component: Component, recipe_file: str = "recipe.yaml") -> Path:
    """gdk ``Zip.build``: returns ``zip-build/<zip_name>.zip``."""
    build = root / "zip-build"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    unwanted = excluded_paths(root, (*GDK_ALWAYS_EXCLUDED, recipe_file, *component.excludes))

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {
            n for n in names if str(Path(directory) / n) in unwanted or f"{Path(directory) / n}{os.sep}" in unwanted
        }

    copy = build / root.name
    shutil.copytree(root, copy, ignore=ignore)
    return Path(shutil.make_archive(str(build / component.zip_name), "zip", root_dir=copy))


def _key(mapping: Mapping[str, Any], wanted: str) -> str:
    """The key of ``mapping`` equal to ``wanted`` ignoring case (gdk reads recipes case-insensitively)."""
    return next((k for k in mapping if k.lower() == wanted.lower()), wanted)


def transform_recipe(recipe: dict[str, Any], component: Component, built: set[str]) -> dict[str, Any]:
    """gdk's ``update_component_recipe_file``: name, version, publisher and the URIs of built artifacts."""
    out: dict[str, Any] = json.loads(json.dumps(recipe))  # a deep copy of plain JSON data
    out[_key(out, "ComponentName")] = component.name
    out[_key(out, "ComponentVersion")] = component.version
    out[_key(out, "ComponentPublisher")] = component.author
    for manifest in out.get(_key(out, "Manifests"), []):
        for artifact in manifest.get(_key(manifest, "Artifacts"), []):
            uri_key = _key(artifact, "URI")
            uri = artifact.get(uri_key)
            if not isinstance(uri, str) or not uri.startswith(S3_PREFIX):
                continue
            file_name = Path(uri).name
            if file_name not in built:
                msg = f"Could not find artifact with URI '{uri}' on s3 or inside the build folders."
                raise BuildError(f"{msg} (built: {sorted(built)}; offline builds cannot look on S3)")
            artifact[uri_key] = f"{BUILT_URI}/{file_name}"
    return out


def _lower_keys(value: Any) -> Any:  # noqa: ANN401 - raw recipe
    if isinstance(value, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower_keys(v) for v in value]
    return value


_LIFECYCLE_STEPS = {"setenv", "bootstrap", "install", "startup", "run", "shutdown", "recover"}


def recipe_problems(recipe: Any) -> list[str]:  # noqa: ANN401, C901, PLR0912 - raw recipe, one check per rule
    """The rules of gdk's recipe schema (draft-7, on the lower-cased recipe) this component can break."""
    if not isinstance(recipe, dict):
        return ["the recipe must be a mapping"]
    r = _lower_keys(recipe)
    allowed = {
        "recipeformatversion",
        "componentname",
        "componentdescription",
        "componentpublisher",
        "componentversion",
        "componentconfiguration",
        "componenttype",
        "componentsource",
        "componentdependencies",
        "manifests",
        "lifecycle",
    }
    problems = [f"unknown top-level key {k!r}" for k in r if k not in allowed]
    problems += [
        f"{k} is required"
        for k in ("recipeformatversion", "componentname", "componentversion", "manifests")
        if k not in r
    ]
    if "recipeformatversion" in r and r["recipeformatversion"] != "2020-01-25":
        problems.append(f"RecipeFormatVersion must be the string '2020-01-25', not {r['recipeformatversion']!r}")
    name = r.get("componentname")
    if "componentname" in r and (not isinstance(name, str) or not _COMPONENT_NAME.match(name) or len(name) > 128):  # noqa: PLR2004
        problems.append(f"ComponentName {name!r} must match [a-zA-Z0-9-_.]+ and be at most 128 characters")
    version = r.get("componentversion")
    if "componentversion" in r and (not isinstance(version, str) or len(version) > 64):  # noqa: PLR2004
        problems.append(f"ComponentVersion {version!r} must be a string of at most 64 characters")
    for key in ("componentdescription", "componentpublisher"):
        if key in r and not isinstance(r[key], str):
            problems.append(f"{key} must be a string")
    manifests = r.get("manifests", [])
    if not isinstance(manifests, list):
        return [*problems, "Manifests must be a list"]
    for i, manifest in enumerate(manifests):
        if not isinstance(manifest, dict):
            problems.append(f"Manifests[{i}] must be a mapping")
            continue
        for step, body in manifest.get("lifecycle", {}).items():
            if step not in _LIFECYCLE_STEPS:
                problems.append(f"Manifests[{i}].Lifecycle.{step} is not a lifecycle step")
            elif step != "setenv" and isinstance(body, dict):
                if "script" not in body:
                    problems.append(f"Manifests[{i}].Lifecycle.{step} needs a Script")
                timeout = body.get("timeout")
                if timeout is not None and not isinstance(timeout, int | str):
                    problems.append(f"Manifests[{i}].Lifecycle.{step}.Timeout must be an integer")
        for j, artifact in enumerate(manifest.get("artifacts", [])):
            where = f"Manifests[{i}].Artifacts[{j}]"
            if "uri" not in artifact:
                problems.append(f"{where}.URI is required")
            if not re.match(r"(?i)^(ZIP|NONE)$", str(artifact.get("unarchive", "NONE"))):
                problems.append(f"{where}.Unarchive must be ZIP or NONE")
            for perm in ("read", "execute"):
                value = artifact.get("permission", {}).get(perm, "NONE")
                if not re.match(r"(?i)^(NONE|OWNER|ALL)$", str(value)):
                    problems.append(f"{where}.Permission.{perm} must be NONE, OWNER or ALL")
    return problems


def read_recipe(path: Path) -> dict[str, Any]:
    """The project's recipe, with gdk's own input checks: the size on disk first, then YAML."""
    size = path.stat().st_size
    if size > RECIPE_MAX_BYTES:
        raise BuildError(f"{path} is {size} bytes; Greengrass takes at most {RECIPE_MAX_BYTES}")
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(recipe, dict):
        raise BuildError(f"{path} must hold a YAML mapping")
    return recipe


def gdk_build(root: Path, component: Component) -> tuple[Path, Path]:
    """gdk ``component build`` after the wheels are in place: (built recipe, artifact zip)."""
    recipes_found = [p for p in (root / "recipe.yaml", root / "recipe.json") if p.is_file()]
    if len(recipes_found) != 1:
        raise BuildError(f"{root} needs exactly one of recipe.yaml and recipe.json (found {len(recipes_found)})")
    if recipes_found[0].suffix != ".yaml":
        raise BuildError("this build writes YAML recipes only")
    out = root / "greengrass-build"
    shutil.rmtree(out, ignore_errors=True)
    recipes = out / "recipes"
    artifacts = out / "artifacts" / component.name / component.version
    recipes.mkdir(parents=True)
    artifacts.mkdir(parents=True)
    zip_path = zip_build(root, component, recipes_found[0].name)
    built = {p.name for p in zip_path.parent.iterdir() if p.is_file()}
    recipe = transform_recipe(read_recipe(recipes_found[0]), component, built)
    problems = recipe_problems(recipe)
    if problems:
        raise BuildError(
            f"{recipes_found[0]} does not validate against the Greengrass recipe schema: {'; '.join(problems)}"
        )
    for uri in _artifact_uris(recipe):
        if uri.startswith(BUILT_URI + "/"):
            shutil.copy(zip_path.parent / Path(uri).name, artifacts)
    built_recipe = recipes / recipes_found[0].name
    with built_recipe.open("w", encoding="utf-8") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
    return built_recipe, artifacts / zip_path.name


def _artifact_uris(recipe: Mapping[str, Any]) -> Iterator[str]:
    for manifest in recipe.get(_key(recipe, "Manifests"), []):
        for artifact in manifest.get(_key(manifest, "Artifacts"), []):
            yield str(artifact.get(_key(artifact, "URI"), ""))


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
