"""The Greengrass component: recipe.yaml and gdk-config.json, what gdk 1.6.2 checks (it is not on PyPI, so
no test runs it) and what it does not.

The build itself (scripts/build_component.py, the wheel set per target, reproducibility) is tested in
tests/unit/test_component_build.py, deploy/ in tests/unit/test_deploy.py; the built zip is installed and
run in tests/integration/test_component_install.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_gateway.config import greengrass
from edge_gateway.config.model import HeartbeatSettings, IotCoreDestination, ShadowSettings, SiteWiseDestination
from scripts import build_component as build

ROOT = Path(__file__).parents[2]
RECIPE = ROOT / "recipe.yaml"
THING = "line1-gw"
SITEWISE_TYPES = ("double", "integer", "boolean", "string")  # the {type} of SiteWise topics


@pytest.fixture(scope="module")
def recipe() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def gdk() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "gdk-config.json").read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def component() -> build.Component:
    return build.read_component(ROOT)


def lifecycle(recipe: dict[str, Any]) -> dict[str, Any]:
    (manifest,) = recipe["Manifests"]
    steps: dict[str, Any] = manifest["Lifecycle"]
    return steps


def default_configuration(recipe: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    return config


# --- recipe.yaml -----------------------------------------------------------------------------------------


def test_recipe_passes_the_gdk_schema_rules_and_the_size_limit(recipe: dict[str, Any]) -> None:
    assert build.recipe_problems(recipe) == []
    assert RECIPE.stat().st_size <= 16_000
    assert build.read_recipe(RECIPE) == recipe


def test_recipe_format_version_is_a_string_not_a_yaml_date(recipe: dict[str, Any]) -> None:
    assert recipe["RecipeFormatVersion"] == "2020-01-25"
    unquoted = yaml.safe_load("RecipeFormatVersion: 2020-01-25")
    assert build.recipe_problems({**recipe, **unquoted}) == [
        "RecipeFormatVersion must be the string '2020-01-25', not datetime.date(2020, 1, 25)"
    ]


def test_name_version_and_publisher_agree_with_gdk_config_and_pyproject(
    recipe: dict[str, Any], component: build.Component
) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert re.fullmatch(r"[a-zA-Z0-9-_.]{1,128}", recipe["ComponentName"])
    assert not recipe["ComponentName"].startswith("aws.greengrass")  # would replace a public component
    assert (recipe["ComponentName"], recipe["ComponentVersion"], recipe["ComponentPublisher"]) == (
        component.name,
        component.version,
        component.author,
    )  # gdk overwrites them silently: a mismatch would go unnoticed
    assert component.version == pyproject["version"]


def test_one_linux_manifest_for_exactly_the_architectures_the_wheels_are_built_for(recipe: dict[str, Any]) -> None:
    (manifest,) = recipe["Manifests"]
    platform = manifest["Platform"]
    assert platform["os"] == "linux"
    arch = platform["architecture"]
    assert arch.startswith("/")
    assert arch.endswith("/")  # a Greengrass (Java) regular expression, matched in full
    # What the nucleus reports (os.arch, normalized): amd64, aarch64, arm (32-bit), x86.
    matches = [a for a in ("amd64", "aarch64", "arm", "armv7l", "x86", "x86_64") if re.fullmatch(arch[1:-1], a)]
    assert matches == [build.GREENGRASS_ARCHITECTURES[a] for a in build.ARCHITECTURES]
    assert {t.arch for t in build.TARGETS} == set(build.ARCHITECTURES) == {"x86_64", "aarch64"}


def test_lifecycle_steps_and_privileges(recipe: dict[str, Any]) -> None:
    steps = lifecycle(recipe)
    assert set(steps) == {"Install", "Run"}
    assert all(step["RequiresPrivilege"] is False for step in steps.values())
    # Install re-runs at every nucleus start; the default 120 s is too short for a first install on a Pi.
    assert 300 <= steps["Install"]["Timeout"] <= 1800
    assert "Timeout" not in steps["Run"]  # Run runs until stopped


def test_install_and_run_use_the_same_venv_of_this_version(recipe: dict[str, Any], component: build.Component) -> None:
    steps = lifecycle(recipe)
    venv = f"{{work:path}}/venv-{component.version}"
    install, run = steps["Install"]["Script"], steps["Run"]["Script"]
    assert f'venv="{venv}"' in install
    assert run.startswith(f'exec "{venv}/bin/python" -m edge_gateway ')
    assert run.endswith(" run --greengrass")
    assert f'"edge-gateway=={component.version}"' in install  # exactly the bundled version
    assert set(re.findall(r"venv-[0-9][^\"/ ]*", install + run)) == {f"venv-{component.version}"}


def test_install_is_offline_idempotent_and_from_the_artifact(
    recipe: dict[str, Any], component: build.Component
) -> None:
    install = lifecycle(recipe)["Install"]["Script"]
    lines = install.splitlines()
    assert lines[0] == "set -eu"
    # Nothing to do at a restart, unless the venv's Python went away (an OS upgrade).
    assert lines[2] == 'if [ -f "$venv/.installed" ] && "$venv/bin/python" -c "" >/dev/null 2>&1; then exit 0; fi'
    assert "--no-index" in install
    assert f'wheels="{{artifacts:decompressedPath}}/{component.zip_name}/wheels"' in lines
    assert '--find-links "$wheels"' in install
    assert 'if [ ! -d "$wheels" ]; then' in lines  # a zip built some other way says so
    pip = next(i for i, line in enumerate(lines) if "pip install" in line)
    assert lines.index('"$venv/bin/python" -V > "$venv/.installed"') > pip
    assert '"$python" -m venv "$venv"' in lines


def test_install_looks_for_exactly_the_python_versions_the_wheels_are_built_for(recipe: dict[str, Any]) -> None:
    install = lifecycle(recipe)["Install"]["Script"]
    (loop,) = [line.strip() for line in install.splitlines() if line.strip().startswith("for candidate in")]
    newest_first = sorted(build.PYTHON_VERSIONS, key=lambda v: tuple(map(int, v.split("."))), reverse=True)
    assert loop == f"for candidate in {' '.join(f'python{v}' for v in newest_first)}; do"
    assert {t.python for t in build.TARGETS} == set(build.PYTHON_VERSIONS) == {"3.11", "3.12", "3.13"}


def test_every_thing_name_variable_is_quoted(recipe: dict[str, Any]) -> None:
    text = RECIPE.read_text(encoding="utf-8")
    uses = [line for line in text.splitlines() if "{iot:thingName}" in line]
    assert uses
    for line in uses:
        item = line.strip()
        value = item[2:] if item.startswith("- ") else line.split(": ", 1)[1].strip()
        assert value[0] in "\"'", line  # unquoted, YAML reads a flow mapping
    setenv = lifecycle(recipe)["Run"]["Setenv"]
    assert all(isinstance(v, str) for v in setenv.values())
    assert setenv["EDGE_GATEWAY_THING_NAME"] == "{iot:thingName}"


def test_run_gets_every_setting_the_gateway_reads(recipe: dict[str, Any]) -> None:
    setenv = lifecycle(recipe)["Run"]["Setenv"]
    read = {
        value
        for name, value in vars(greengrass).items()
        if name.isupper() and isinstance(value, str) and value.startswith("EDGE_GATEWAY_")
    }
    run = lifecycle(recipe)["Run"]["Script"]
    used_by_script = set(re.findall(r"\$(EDGE_GATEWAY_\w+)", run))
    assert set(setenv) == read | used_by_script


def test_configuration_variables_all_exist_and_all_are_used(recipe: dict[str, Any]) -> None:
    text = json.dumps(recipe["Manifests"])
    referenced = set(re.findall(r"\{configuration:/(\w+)\}", text))
    defaults = default_configuration(recipe)
    # A missing key is left as the literal "{configuration:/x}" by the nucleus: every one needs a default.
    assert referenced == set(defaults) - {"accessControl"}


def test_default_configuration_holds_numbers_as_strings(recipe: dict[str, Any]) -> None:
    defaults = default_configuration(recipe)
    scalars = {k: v for k, v in defaults.items() if not isinstance(v, dict)}
    assert all(isinstance(v, str) for v in scalars.values()), scalars
    assert int(defaults["port"]) == 443


def _ipc_calls() -> set[str]:
    """The IPC operations the package calls (the V2 client's ``*_async`` methods), as model names."""
    used = set()
    for path in (ROOT / "edge_gateway").rglob("*.py"):
        for method in re.findall(r"\.(\w+)_async\(", path.read_text(encoding="utf-8")):
            used.add("aws.greengrass#" + "".join(part.title() for part in method.split("_")).replace("Iot", "IoT"))
    return used


def test_access_control_grants_exactly_what_the_ipc_transport_uses(recipe: dict[str, Any]) -> None:
    """Only edge_gateway/publish/transport/greengrass_ipc.py talks to the nucleus (publisher.mqtt.mode greengrass_ipc):
    the recipe grants exactly its operations, on the default data and status topics, the named shadow and
    the shadow's local delta topic, each with the thing name variable; nothing else."""
    users = [p for p in (ROOT / "edge_gateway").rglob("*.py") if "greengrasscoreipc" in p.read_text(encoding="utf-8")]
    assert [p.name for p in users] == ["greengrass_ipc.py"]
    access = default_configuration(recipe)["accessControl"]
    grants: dict[str, set[tuple[str, str]]] = {}
    for destination, policies in access.items():
        for policy in policies.values():
            pairs = {(op, res) for op in policy["operations"] for res in policy["resources"]}
            grants.setdefault(destination, set()).update(pairs)
    assert {op for pairs in grants.values() for op, _ in pairs} == _ipc_calls()
    thing = "{iot:thingName}"
    data = IotCoreDestination(type="iotcore", name="d").topic.format(thing=thing, source="+")
    status = HeartbeatSettings().topic.format(thing=thing)
    sitewise = SiteWiseDestination(type="sitewise", name="s").topic
    shadow = f"$aws/things/{thing}/shadow/name/{ShadowSettings().name}"
    assert data == status.rsplit("/", 1)[0] + "/+"  # one grant covers every source and the status topic
    publish = "aws.greengrass#PublishToIoTCore"
    expected_topics = {data} | {sitewise.format(type=t, thing=thing, source="+") for t in SITEWISE_TYPES}
    assert grants == {
        "aws.greengrass.ipc.mqttproxy": {(publish, topic) for topic in expected_topics},
        "aws.greengrass.ShadowManager": {
            ("aws.greengrass#GetThingShadow", shadow),
            ("aws.greengrass#UpdateThingShadow", shadow),
        },
        "aws.greengrass.ipc.pubsub": {("aws.greengrass#SubscribeToTopic", f"{shadow}/update/delta")},
    }


def test_the_only_dependency_is_shadow_manager_soft(recipe: dict[str, Any]) -> None:
    # Not on the nucleus: that could update it. SOFT: a ShadowManager restart does not restart the gateway.
    assert recipe["ComponentDependencies"] == {
        "aws.greengrass.ShadowManager": {"VersionRequirement": ">=2.0.0 <3.0.0", "DependencyType": "SOFT"}
    }


def test_one_zip_artifact_named_after_zip_name(recipe: dict[str, Any], component: build.Component) -> None:
    (manifest,) = recipe["Manifests"]
    (artifact,) = manifest["Artifacts"]
    assert artifact["Unarchive"] == "ZIP"
    assert artifact["URI"].startswith("s3://")
    assert Path(artifact["URI"]).name == component.zip_name + ".zip"


def test_recipe_problems_catches_what_gdk_refuses() -> None:
    bad = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": "com example",
        "ComponentVersion": "1.0.0",
        "Extra": 1,
        "Manifests": [
            {
                "Lifecycle": {"Run": {"RequiresPrivilege": True}, "Start": "x"},
                "Artifacts": [{"URI": "s3://b/x.tar", "Unarchive": "TAR", "Permission": {"Read": "GROUP"}}],
            }
        ],
    }
    assert build.recipe_problems(bad) == [
        "unknown top-level key 'extra'",
        "ComponentName 'com example' must match [a-zA-Z0-9-_.]+ and be at most 128 characters",
        "Manifests[0].Lifecycle.run needs a Script",
        "Manifests[0].Lifecycle.start is not a lifecycle step",
        "Manifests[0].Artifacts[0].Unarchive must be ZIP or NONE",
        "Manifests[0].Artifacts[0].Permission.read must be NONE, OWNER or ALL",
    ]
    assert build.recipe_problems({"Manifests": []}) == [
        "recipeformatversion is required",
        "componentname is required",
        "componentversion is required",
    ]


# --- gdk-config.json -------------------------------------------------------------------------------------


def test_gdk_config_runs_the_build_through_gdks_custom_build_system(gdk: dict[str, Any]) -> None:
    assert build.gdk_config_problems(gdk) == []
    (comp,) = gdk["component"].values()
    # gdk 1.6.2 runs custom_build_command as it is, in the project folder, after emptying greengrass-build/.
    assert comp["build"]["build_system"] == "custom"
    assert comp["build"]["custom_build_command"] == ["python3", "scripts/build_component.py"]
    assert (ROOT / comp["build"]["custom_build_command"][1]).is_file()
    assert not comp["build"]["options"]["zip_name"].endswith(".zip")
    assert comp["publish"]["bucket"]
    assert comp["publish"]["region"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda c: c["build"]["options"].update(zip_name="x.zip"), "must not end with .zip"),
        (lambda c: c["build"]["options"].pop("zip_name"), "zip_name is required"),
        (lambda c: c["build"].update(build_system="zip"), "build_system must be 'custom'"),
        (lambda c: c["build"].update(custom_build_command="make build"), "custom_build_command must be"),
        (lambda c: c.update(version="1.0"), "must be a semantic version"),
        (lambda c: c["publish"].pop("bucket"), "publish.bucket is required"),
        (lambda c: c.pop("author"), "author is required"),
    ],
)
def test_gdk_config_problems_catches_what_breaks_a_build(gdk: dict[str, Any], change: Any, problem: str) -> None:
    doc = json.loads(json.dumps(gdk))
    change(next(iter(doc["component"].values())))
    assert any(problem in p for p in build.gdk_config_problems(doc))


def test_gdk_config_has_exactly_one_component(gdk: dict[str, Any]) -> None:
    doc = json.loads(json.dumps(gdk))
    doc["component"]["com.example.Other"] = doc["component"][next(iter(doc["component"]))]
    assert "component must hold exactly one key: the component name" in build.gdk_config_problems(doc)


# --- the Install script's choice of interpreter, with stand-in interpreters ----------------------------------

_FAKE_PYTHON = """#!/bin/sh
# python{version} as the Install script uses it: the venv check (-c), -V, -m venv DIR, -m pip install
case "$1" in
  -c) exit {venv_status} ;;
  -V) echo "Python {version}.0" ;;
  -m) if [ "$2" = venv ]; then mkdir -p "$3/bin" && ln -s "$0" "$3/bin/python"; fi ;;
esac
"""


def run_install(recipe: dict[str, Any], tmp_path: Path, pythons: dict[str, bool]) -> subprocess.CompletedProcess[str]:
    """The recipe's Install script on a device whose PATH holds only ``pythons`` (version: has venv) and sh tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mkdir", "ln", "rm"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    for version, has_venv in pythons.items():
        fake = bin_dir / f"python{version}"
        fake.write_text(_FAKE_PYTHON.format(version=version, venv_status=0 if has_venv else 1), encoding="utf-8")
        fake.chmod(0o755)
    (tmp_path / "artifact" / "edge-gateway" / "wheels").mkdir(parents=True)
    script = lifecycle(recipe)["Install"]["Script"]
    script = script.replace("{work:path}", str(tmp_path / "work")).replace(
        "{artifacts:decompressedPath}", str(tmp_path / "artifact")
    )
    return subprocess.run(
        ["/bin/sh", "-c", script], env={"PATH": str(bin_dir)}, capture_output=True, text=True, check=False, timeout=30
    )


@pytest.mark.parametrize(
    ("pythons", "chosen"),
    [
        ({"3.11": True, "3.12": True, "3.13": True}, "3.13"),
        ({"3.11": True, "3.12": True}, "3.12"),  # Ubuntu 24.04
        ({"3.11": True}, "3.11"),  # Debian 12, Raspberry Pi OS bookworm
        ({"3.13": True, "3.14": True}, "3.13"),  # a newer Python the wheels are not built for is not taken
        ({"3.11": True, "3.13": False}, "3.11"),  # python3.13 without python3.13-venv
    ],
)
def test_install_takes_the_newest_supported_python_and_says_which(
    recipe: dict[str, Any], tmp_path: Path, pythons: dict[str, bool], chosen: str
) -> None:
    done = run_install(recipe, tmp_path, pythons)
    assert done.returncode == 0, done.stderr
    assert f"edge-gateway: installing with {tmp_path}/bin/python{chosen} (Python {chosen}.0)" in done.stdout
    venv = tmp_path / "work" / "venv-0.1.0"
    assert (venv / ".installed").read_text(encoding="utf-8") == f"Python {chosen}.0\n"
    skipped = [v for v, has_venv in pythons.items() if not has_venv]
    for version in skipped:
        assert f"python{version} is here but cannot make a venv (install python{version}-venv)" in done.stderr


@pytest.mark.parametrize("pythons", [{}, {"3.10": True, "3.14": True}, {"3.12": False}])
def test_install_without_a_supported_python_says_what_to_install(
    recipe: dict[str, Any], tmp_path: Path, pythons: dict[str, bool]
) -> None:
    done = run_install(recipe, tmp_path, pythons)
    assert done.returncode == 1
    assert "edge-gateway needs CPython 3.13, 3.12 or 3.11 with its venv module" in done.stderr
    assert not (tmp_path / "work" / "venv-0.1.0").exists()


def test_install_makes_the_venv_again_when_its_python_went_away(recipe: dict[str, Any], tmp_path: Path) -> None:
    """Debian 12 upgraded to 13: python3.11 is gone, the venv's interpreter with it; Install takes python3.13."""
    done = run_install(recipe, tmp_path, {"3.11": True})
    assert done.returncode == 0, done.stderr
    venv = tmp_path / "work" / "venv-0.1.0"
    (tmp_path / "bin" / "python3.11").unlink()
    fake = tmp_path / "bin" / "python3.13"
    fake.write_text(_FAKE_PYTHON.format(version="3.13", venv_status=0), encoding="utf-8")
    fake.chmod(0o755)
    script = lifecycle(recipe)["Install"]["Script"]
    script = script.replace("{work:path}", str(tmp_path / "work")).replace(
        "{artifacts:decompressedPath}", str(tmp_path / "artifact")
    )
    again = subprocess.run(
        ["/bin/sh", "-c", script],
        env={"PATH": str(tmp_path / "bin")},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert again.returncode == 0, again.stderr
    assert "installing with" in again.stdout
    assert (venv / ".installed").read_text(encoding="utf-8") == "Python 3.13.0\n"
