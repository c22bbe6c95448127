"""The component build (scripts/build_component.py, what `gdk component build` runs): a complete wheel set for
every target, laid out as gdk publishes it, the same bytes from the same commit. Offline and fast.

What proves the real thing, and how it stays offline: the build ships exactly the dependency wheels that
scripts/component_build/wheels.lock.json names, each checked against its sha256 when it is downloaded, and
the lock keeps each wheel's own METADATA (Requires-Dist, Requires-Python) as PyPI served it. Here a stand-in
wheel is made for every locked file, with its exact file name (so its tags) and its real METADATA, the lock
copied with the stand-ins' hashes; then the project is built in a copy, as gdk does it, and the zip's
``wheels/`` must let pip resolve ``edge-gateway`` for every CPython version and architecture
(``pip install --dry-run --only-binary=:all: --python-version … --platform … --no-index --find-links …``).
Names, versions, tags and dependencies are the real ones; only the wheels' code is left out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from scripts import build_component as build

ROOT = Path(__file__).parents[2]
PROJECT_FILES = (
    "pyproject.toml",
    "README.md",
    "recipe.yaml",
    "gdk-config.json",
    "edge_gateway",
    "simulators",
    "scripts",
)


def stand_in_wheel(directory: Path, file: str, locked: dict[str, Any]) -> Path:
    """A wheel named ``file`` holding only the METADATA the lock recorded for it (and WHEEL, RECORD)."""
    name, version, _, tags = parse_wheel_filename(file)
    dist_info = "-".join(file.split("-")[:2]) + ".dist-info"
    meta = [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"]
    if locked["requires_python"]:
        meta.append(f"Requires-Python: {locked['requires_python']}\n")
    meta += [f"Requires-Dist: {r}\n" for r in locked["requires_dist"]]
    # The extras its dependencies are marked with (pip ignores an extra the metadata does not provide).
    extras = sorted({m for r in locked["requires_dist"] for m in re.findall(r"extra\s*==\s*[\"']([^\"']+)", r)})
    meta += [f"Provides-Extra: {e}\n" for e in extras]
    wheel_file = "Wheel-Version: 1.0\nRoot-Is-Purelib: false\n" + "".join(f"Tag: {t}\n" for t in sorted(map(str, tags)))
    files = {f"{dist_info}/METADATA": "".join(meta), f"{dist_info}/WHEEL": wheel_file}
    record = "".join(f"{n},,\n" for n in [*files, f"{dist_info}/RECORD"])
    path = directory / file
    with zipfile.ZipFile(path, "w") as zf:
        for entry, text in [*files.items(), (f"{dist_info}/RECORD", record)]:
            zf.writestr(zipfile.ZipInfo(entry, (1980, 1, 1, 0, 0, 0)), text)
    return path


def project_copy(base: Path) -> Path:
    """The project as a fresh clone has it, with the download cache filled by stand-ins (and the lock to match)."""
    project = base / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, project / name)
    lock_path = project / build.LOCK_PATH
    lock = json.loads(lock_path.read_text(encoding="utf-8"))
    cache = project / "build" / "wheel-cache"
    cache.mkdir(parents=True)
    for file, locked in lock["wheels"].items():
        locked["sha256"] = hashlib.sha256(stand_in_wheel(cache, file, locked).read_bytes()).hexdigest()
    lock_path.write_text(json.dumps(lock), encoding="utf-8")
    return project


def gdk_component_build(project: Path) -> subprocess.CompletedProcess[str]:
    """What gdk 1.6.2 does for a custom build: empty greengrass-build/, make its folders, run the command as is."""
    config = json.loads((project / "gdk-config.json").read_text(encoding="utf-8"))
    ((name, component),) = config["component"].items()
    shutil.rmtree(project / "greengrass-build", ignore_errors=True)
    (project / "greengrass-build" / "recipes").mkdir(parents=True)
    (project / "greengrass-build" / "artifacts" / name / component["version"]).mkdir(parents=True)
    command = component["build"]["custom_build_command"]
    assert command[0] == "python3"  # here: this interpreter; --offline proves nothing is downloaded
    return subprocess.run(
        [sys.executable, *command[1:], "--offline"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )


@dataclass(frozen=True)
class Built:
    project: Path
    recipe: dict[str, Any]
    artifact: Path
    unpacked: Path  # where Greengrass unarchives the zip: <decompressedPath>/<zip name>/
    first_sha256: str  # of the first of two builds of the same sources
    output: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("gdk")
    project = project_copy(base)
    component = build.read_component(project)
    artifact = project / "greengrass-build" / "artifacts" / component.name / component.version / component.zip_file
    digests = []
    for _ in range(2):
        done = gdk_component_build(project)
        assert done.returncode == 0, done.stdout + done.stderr
        digests.append(hashlib.sha256(artifact.read_bytes()).hexdigest())
    recipe = yaml.safe_load((project / "greengrass-build" / "recipes" / "recipe.yaml").read_text(encoding="utf-8"))
    unpacked = base / "decompressed" / component.zip_name
    with zipfile.ZipFile(artifact) as zf:
        zf.extractall(unpacked)
    assert digests[0] == digests[1]
    return Built(project, recipe, artifact, unpacked, digests[0], done.stdout)


def test_the_build_is_reproducible(built: Built) -> None:
    assert hashlib.sha256(built.artifact.read_bytes()).hexdigest() == built.first_sha256
    with zipfile.ZipFile(built.artifact) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert f"sha256 {built.first_sha256}" in built.output


def test_gdk_layout_recipe_and_one_artifact(built: Built) -> None:
    component = build.read_component(built.project)
    artifacts = built.project / "greengrass-build" / "artifacts" / component.name / component.version
    assert [p.name for p in artifacts.iterdir()] == [component.zip_file]  # gdk publish uploads every file here
    assert built.recipe["ComponentName"] == component.name  # gdk publish refuses another name
    (uri,) = build.artifact_uris(built.recipe)
    assert uri == f"s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/{component.zip_file}"
    assert build.recipe_problems(built.recipe) == []
    assert (built.project / "greengrass-build" / "recipes" / "recipe.yaml").stat().st_size <= 16_000
    with zipfile.ZipFile(built.artifact) as zf:
        assert {n.split("/")[0] for n in zf.namelist()} == {"wheels"}  # no wrapper folder, nothing else


def test_the_zip_holds_the_project_wheel_and_every_locked_wheel(built: Built) -> None:
    lock = build.read_lock(built.project)
    shipped = sorted(p.name for p in (built.unpacked / "wheels").iterdir())
    assert shipped == sorted({"edge_gateway-0.1.0-py3-none-any.whl", *lock.wheels})


@pytest.mark.parametrize("target", build.TARGETS, ids=lambda t: t.key)
def test_pip_resolves_the_component_from_the_zip_alone_for_every_target(built: Built, target: build.Target) -> None:
    wheels = built.unpacked / "wheels"
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--no-index",
                "--find-links",
                str(wheels),
                "--target",
                str(Path(scratch) / "target"),
                "--report",
                str(report),
                *target.pip_options(),
                "edge-gateway==0.1.0",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        picked = {Path(item["download_info"]["url"]).name for item in json.loads(report.read_text())["install"]}
    lock = build.read_lock(built.project)
    assert picked <= set(lock.wheels) | {"edge_gateway-0.1.0-py3-none-any.whl"}
    # pip evaluates markers for the Python it runs on, not the target's: it may add or leave out a dependency
    # marked for some Pythons only (wait_for2, python_version < "3.12"). Any other difference is a bug.
    by_python = {
        canonicalize_name(req.name)
        for wheel in lock.wheels.values()
        for req in map(Requirement, wheel.requires_dist)
        if req.marker is not None and "python_" in str(req.marker)
    }
    differ = picked ^ (set(lock.targets[target.key]) | {"edge_gateway-0.1.0-py3-none-any.whl"})
    assert {parse_wheel_filename(f)[0] for f in differ} <= by_python
    binary = sorted(f for f in picked if not f.endswith("-none-any.whl"))
    assert binary
    assert all(target.arch in f for f in binary), binary
    assert all(f"cp{target.python.replace('.', '')}" in f or "abi3" in f for f in binary), binary


# --- the lock and the check behind it (pure) -------------------------------------------------------------------


def test_the_lock_fits_pyproject_and_names_exactly_what_each_target_installs() -> None:
    _, _, requirements = build.runtime_requirements(ROOT)
    lock = build.read_lock(ROOT)
    assert build.lock_problems(lock, requirements) == []
    for target in build.TARGETS:
        files, problems = build.resolve(lock.infos(), requirements, target)
        assert problems == []
        assert tuple(files) == lock.targets[target.key]
    assert {f for files in lock.targets.values() for f in files} == set(lock.wheels)  # nothing unused


def test_resolve_evaluates_markers_for_the_target_not_this_machine() -> None:
    lock = build.read_lock(ROOT)
    wait_for2 = [f for f in lock.wheels if f.startswith("wait_for2-")]  # asyncua: python_version < "3.12"
    assert wait_for2
    for target in build.TARGETS:
        assert (wait_for2[0] in lock.targets[target.key]) == (target.python == "3.11")


def test_resolve_names_a_missing_wheel_and_who_needs_it() -> None:
    lock = build.read_lock(ROOT)
    infos = [i for i in lock.infos() if not (i.name == "pydantic-core" and "cp313" in i.file and "aarch64" in i.file)]
    target = build.Target("3.13", "aarch64")
    _, problems = build.resolve(infos, ["pydantic>=2.13"], target)
    (problem,) = problems
    assert problem.startswith("cp313-aarch64: no wheel for pydantic-core==")
    assert "(needed by pydantic-" in problem
    for other in build.TARGETS:
        if other != target:
            assert build.resolve(infos, ["pydantic>=2.13"], other)[1] == []


def test_a_stale_lock_says_how_to_renew_it() -> None:
    _, _, requirements = build.runtime_requirements(ROOT)
    lock = build.read_lock(ROOT)
    (problem,) = build.lock_problems(lock, [*requirements[:-1], "cryptography>=99"])
    assert "run `python scripts/build_component.py --lock`" in problem


def test_offline_with_an_empty_cache_names_what_is_missing(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, project / name)
    with pytest.raises(build.BuildError, match=r"--offline, and .*wheel-cache lacks .*awscrt-"):
        build.build(project, offline=True)


# --- the project's own wheel and gdk's recipe transform ------------------------------------------------------


def test_transform_recipe_rewrites_like_gdk() -> None:
    recipe = build.read_recipe(ROOT / "recipe.yaml")
    other = build.Component("com.example.Renamed", "2.3.4", "Plant IT", "edge-gateway", "b", "r")
    out = build.transform_recipe(recipe, other, {"edge-gateway.zip"})
    assert (out["ComponentName"], out["ComponentVersion"], out["ComponentPublisher"]) == (
        "com.example.Renamed",
        "2.3.4",
        "Plant IT",
    )
    assert list(build.artifact_uris(out)) == ["s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/edge-gateway.zip"]
    assert out["Manifests"][0]["Lifecycle"] == recipe["Manifests"][0]["Lifecycle"]
    assert list(out) == list(recipe)  # key order kept, as gdk's re-dump keeps it
    with pytest.raises(build.BuildError, match="Could not find artifact with URI"):
        build.transform_recipe(recipe, other, {"other.zip"})


def test_deterministic_zip_ignores_file_dates_and_modes(tmp_path: Path) -> None:
    for name in ("b", "a"):
        src = tmp_path / name / "wheels"
        src.mkdir(parents=True)
        (src / "z-1-py3-none-any.whl").write_bytes(b"z")
        (src / "a-1-py3-none-any.whl").write_bytes(b"a")
    (tmp_path / "b" / "wheels" / "a-1-py3-none-any.whl").chmod(0o600)
    first = build.deterministic_zip(tmp_path / "a", tmp_path / "a.zip")
    second = build.deterministic_zip(tmp_path / "b", tmp_path / "b.zip")
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        assert zf.namelist() == ["wheels/", "wheels/a-1-py3-none-any.whl", "wheels/z-1-py3-none-any.whl"]


def test_project_wheel_matches_the_installed_metadata_and_is_reproducible(tmp_path: Path) -> None:
    first = build.build_project_wheel(ROOT, tmp_path / "a")
    second = build.build_project_wheel(ROOT, tmp_path / "b")
    assert first.name == "edge_gateway-0.1.0-py3-none-any.whl"
    assert first.read_bytes() == second.read_bytes()
    installed = metadata.distribution("edge-gateway")
    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
        meta = zf.read("edge_gateway-0.1.0.dist-info/METADATA").decode()
        entry_points = zf.read("edge_gateway-0.1.0.dist-info/entry_points.txt").decode()
        record = zf.read("edge_gateway-0.1.0.dist-info/RECORD").decode()
        for line in record.splitlines()[:-1]:
            name, digest, size = line.rsplit(",", 2)
            data = zf.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, int(size)) == (f"sha256={expected}", len(data))
    assert "edge_gateway/cli.py" in names
    assert "edge_gateway/config/greengrass.py" in names
    assert "simulators/modbus_plc.py" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "scripts/", "bench/"))]
    lines = meta.splitlines()
    requires = {Requirement(line.split(": ", 1)[1]) for line in lines if line.startswith("Requires-Dist: ")}
    # What the device installs (setuptools reorders specifiers; extras such as dev may be newer than this venv).
    runtime = {r for r in requires if r.marker is None}
    assert runtime == {Requirement(r) for r in installed.requires or [] if "extra ==" not in r}
    assert f"Requires-Python: {installed.metadata['Requires-Python']}" in lines
    for version in build.PYTHON_VERSIONS:
        assert f"Classifier: Programming Language :: Python :: {version}" in lines
    assert "edge-gateway = edge_gateway.cli:main" in entry_points
