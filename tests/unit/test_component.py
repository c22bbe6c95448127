"""The Greengrass component: what gdk 1.6.2 checks (it cannot be installed here) and what it does not.

recipe.yaml, gdk-config.json, deploy/ and scripts/build_component.py (`make build`). The built zip is
installed and run in tests/integration/test_component_install.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

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


def test_one_linux_manifest_for_the_architectures_the_wheels_are_built_for(recipe: dict[str, Any]) -> None:
    (manifest,) = recipe["Manifests"]
    platform = manifest["Platform"]
    assert platform["os"] == "linux"
    arch = platform["architecture"]
    assert arch.startswith("/")
    assert arch.endswith("/")  # a Greengrass (Java) regular expression, matched in full
    matches = [a for a in ("amd64", "aarch64", "arm", "x86") if re.fullmatch(arch[1:-1], a)]
    assert matches == ["amd64", "aarch64"]
    assert build.ARCHITECTURES == ("x86_64", "aarch64")


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
    assert lines[2] == 'if [ -f "$venv/.installed" ]; then exit 0; fi'  # nothing to do at a restart
    assert "--no-index" in install
    assert f'wheels="{{artifacts:decompressedPath}}/{component.zip_name}/wheels"' in lines
    assert '--find-links "$wheels"' in install
    assert 'if [ ! -d "$wheels" ]; then' in lines  # a zip built without them says so
    assert lines.index('touch "$venv/.installed"') > next(i for i, line in enumerate(lines) if "pip install" in line)
    assert "python3.11 -m venv" in install
    assert build.PYTHON_VERSION == "3.11"


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


def test_gdk_config_follows_the_schema_and_the_measured_rules(gdk: dict[str, Any]) -> None:
    assert build.gdk_config_problems(gdk) == []
    (comp,) = gdk["component"].values()
    options = comp["build"]["options"]
    assert not options["zip_name"].endswith(".zip")
    assert all(e.startswith("**/") for e in options["excludes"])
    assert comp["publish"]["bucket"]
    assert comp["publish"]["region"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda c: c["build"]["options"].update(zip_name="x.zip"), "must not end with .zip"),
        (lambda c: c["build"]["options"].pop("zip_name"), "zip_name is required"),
        (lambda c: c["build"]["options"].update(excludes=[]), "excludes must be a non-empty list"),
        (lambda c: c["build"].update(build_system="maven"), "build_system must be 'zip'"),
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


def test_excludes_drop_the_environment_caches_and_tests_but_keep_the_package_and_wheels(
    component: build.Component,
) -> None:
    for needed in (".venv", "tests", "__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache"):
        assert f"**/{needed}" in component.excludes
    for needed in ("bench", "var", "greengrass-build", "zip-build", "*.egg-info", ".git"):
        assert f"**/{needed}" in component.excludes
    kept = [f"{ROOT}/{name}" for name in ("edge_gateway", "simulators", "pyproject.toml", "wheels")]
    assert not set(kept) & build.excluded_paths(ROOT, component.excludes)


# --- the build: gdk's zip build and recipe transform -------------------------------------------------------


def project_tree(root: Path) -> None:
    for path in (
        "pkg/__init__.py",
        "pkg/mod.py",
        "pkg/__pycache__/mod.cpython-311.pyc",
        "pkg/tests/test_x.py",
        "tests/test_y.py",
        ".venv/bin/python",
        ".env",
        "wheels/pkg-1.0.0-py3-none-any.whl",
        "var/buffer/000.seg",
        "recipe.yaml",
        "gdk-config.json",
        "greengrass-build/old.zip",
        "README.md",
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(path, encoding="utf-8")


def test_zip_build_copies_and_zips_like_gdk(tmp_path: Path, component: build.Component) -> None:
    root = tmp_path / "checkout"
    root.mkdir()
    project_tree(root)
    zip_path = build.zip_build(root, component)
    assert zip_path == root / "zip-build" / "edge-gateway.zip"
    assert (root / "zip-build" / "checkout" / "pkg" / "mod.py").is_file()  # gdk leaves the copy behind
    with zipfile.ZipFile(zip_path) as zf:
        files = sorted(n for n in zf.namelist() if not n.endswith("/"))
    assert files == ["README.md", "pkg/__init__.py", "pkg/mod.py", "wheels/pkg-1.0.0-py3-none-any.whl"]


def test_transform_recipe_rewrites_like_gdk(recipe: dict[str, Any]) -> None:
    other = build.Component("com.example.Renamed", "2.3.4", "Plant IT", "edge-gateway", ("**/x",), "b", "r")
    out = build.transform_recipe(recipe, other, {"edge-gateway.zip"})
    assert (out["ComponentName"], out["ComponentVersion"], out["ComponentPublisher"]) == (
        "com.example.Renamed",
        "2.3.4",
        "Plant IT",
    )
    assert out["Manifests"][0]["Artifacts"][0]["URI"] == (
        "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/edge-gateway.zip"
    )
    assert out["Manifests"][0]["Lifecycle"] == recipe["Manifests"][0]["Lifecycle"]
    assert list(out) == list(recipe)  # key order kept, as gdk's re-dump keeps it
    with pytest.raises(build.BuildError, match="Could not find artifact with URI"):
        build.transform_recipe(recipe, other, {"other.zip"})


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
    assert requires == {Requirement(r) for r in installed.requires or []}  # setuptools reorders specifiers
    assert f"Requires-Python: {installed.metadata['Requires-Python']}" in lines
    assert "edge-gateway = edge_gateway.cli:main" in entry_points


# --- deploy/ ---------------------------------------------------------------------------------------------


def test_deployment_document_configures_the_gateway_and_the_nucleus_for_port_443(
    recipe: dict[str, Any], tmp_path: Path
) -> None:
    doc = json.loads((ROOT / "deploy" / "deployment.json").read_text(encoding="utf-8"))
    assert doc["targetArn"].startswith("arn:aws:iot:")
    nucleus = doc["components"]["aws.greengrass.Nucleus"]
    assert json.loads(nucleus["configurationUpdate"]["merge"]) == {
        "interpolateComponentConfiguration": True,
        "greengrassDataPlanePort": 443,
        "mqtt": {"port": 443},
    }
    gateway = doc["components"][recipe["ComponentName"]]
    assert gateway["componentVersion"] == recipe["ComponentVersion"]
    assert gateway["configurationUpdate"]["reset"] == ["/gatewayConfig"]  # a merge never removes a key
    merge = json.loads(gateway["configurationUpdate"]["merge"])  # the API takes a serialized JSON string
    assert set(merge) <= set(default_configuration(recipe))
    configuration = {**default_configuration(recipe), **merge}
    configuration["endpoint"] = configuration["endpoint"].replace(
        "<IOT_ENDPOINT>", "abc-ats.iot.eu-west-1.amazonaws.com"
    )
    env = {
        "AWS_IOT_THING_NAME": THING,
        "GG_ROOT_CA_PATH": "/greengrass/v2/rootCA.pem",
        "AWS_REGION": "eu-west-1",
        "EDGE_GATEWAY_WORK_DIR": str(tmp_path),
    }
    for name, value in lifecycle(recipe)["Run"]["Setenv"].items():
        key = re.fullmatch(r"\{configuration:/(\w+)\}", value)
        if key:
            item = configuration[key.group(1)]
            env[name] = json.dumps(item, sort_keys=True) if isinstance(item, dict) else str(item)
    config, _ = greengrass.load(env)
    assert config.gateway.thing_name == THING
    assert config.client_id == f"{THING}-gateway"
    assert config.publisher.mqtt.port == 443
    assert {s.name for s in config.sources} == {"boiler", "press"}


def _grants(policy: dict[str, Any], action: str, resource: str) -> bool:
    """AWS IoT policy evaluation for Allow statements: '*' and '?' wildcards, '+' and '#' literal."""
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if statement["Effect"] == "Allow" and action in actions:
            for pattern in resources:
                regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
                if re.fullmatch(regex, resource):
                    return True
    return False


def test_iot_policy_allows_what_the_gateway_does_and_nothing_else() -> None:
    text = (ROOT / "deploy" / "iot-policy.json").read_text(encoding="utf-8")
    policy = json.loads(
        text.replace("<REGION>", "eu-west-1").replace("<ACCOUNT_ID>", "123456789012").replace("<THING_NAME>", THING)
    )
    arn = "arn:aws:iot:eu-west-1:123456789012:"
    shadow = f"$aws/things/{THING}/shadow/name/{ShadowSettings().name}"
    data = IotCoreDestination(type="iotcore", name="d").topic.format(thing=THING, source="boiler")
    sitewise = SiteWiseDestination(type="sitewise", name="s").topic.format(type="double", thing=THING, source="boiler")
    status = HeartbeatSettings().topic.format(thing=THING)  # presence, heartbeat and the Last Will
    answers = ("get/accepted", "get/rejected", "update/accepted", "update/rejected", "update/delta")
    allowed = [
        ("iot:Connect", f"client/{THING}-gateway"),
        *[("iot:Publish", f"topic/{t}") for t in (data, sitewise, status, f"{shadow}/get", f"{shadow}/update")],
        *[("iot:Subscribe", f"topicfilter/{shadow}/{a}") for a in answers],
        *[("iot:Receive", f"topic/{shadow}/{a}") for a in answers],
    ]
    for action, resource in allowed:
        assert _grants(policy, action, arn + resource), (action, resource)
    denied = [
        ("iot:Connect", f"client/{THING}"),  # the nucleus' client id
        ("iot:Connect", "client/line2-gw-gateway"),
        ("iot:Publish", "topic/dt/line2-gw/boiler"),
        ("iot:Publish", f"topic/dt/{THING}x/boiler"),
        ("iot:Publish", f"topic/{shadow}/delete"),
        ("iot:Publish", f"topic/$aws/things/{THING}/shadow/update"),  # the classic shadow
        ("iot:Publish", f"topic/$aws/things/{THING}/shadow/name/other/update"),
        ("iot:Publish", "topic/$aws/rules/other_rule/x"),
        ("iot:Subscribe", "topicfilter/#"),
        ("iot:Subscribe", f"topicfilter/dt/{THING}/#"),
        ("iot:Receive", f"topic/dt/{THING}/boiler"),
        ("iot:RetainPublish", f"topic/{status}"),
        ("iot:UpdateThingShadow", f"thing/{THING}"),
    ]
    for action, resource in denied:
        assert not _grants(policy, action, arn + resource), (action, resource)
    assert all(s["Effect"] == "Allow" and "*" not in s["Action"] for s in policy["Statement"])


def test_iot_policy_fits_the_2048_character_limit_for_long_thing_names() -> None:
    text = (ROOT / "deploy" / "iot-policy.json").read_text(encoding="utf-8")
    filled = text.replace("<REGION>", "ap-southeast-2").replace("<ACCOUNT_ID>", "123456789012")
    filled = filled.replace("<THING_NAME>", "x" * 64)
    assert len(re.sub(r"\s", "", filled)) <= 2048


def test_init_config_puts_the_nucleus_on_port_443() -> None:
    doc = yaml.safe_load((ROOT / "deploy" / "greengrass-config.yaml").read_text(encoding="utf-8"))
    nucleus = doc["services"]["aws.greengrass.Nucleus"]["configuration"]
    assert nucleus["greengrassDataPlanePort"] == 443
    assert nucleus["mqtt"]["port"] == 443
    assert nucleus["interpolateComponentConfiguration"] is True


def test_placeholders_are_the_documented_ones() -> None:
    docs = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    for path in (ROOT / "deploy").iterdir():
        for placeholder in set(re.findall(r"<[A-Z_]+>", path.read_text(encoding="utf-8"))):
            assert placeholder in docs, (path.name, placeholder)
