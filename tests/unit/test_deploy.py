"""deploy/: the deployment documents (one device; a fleet from one thing group deployment), the per-device
desired documents of the fleet folder, the one IoT policy of every gateway, the nucleus install config.

Each document is checked by what it does: the deployment's configuration goes through the recipe's Run
environment into ``greengrass.load``; each fleet device's desired document through the shadow's own
``effective_config``; the policy through an evaluator of AWS IoT policies for Allow statements with the
connection's thing name substituted for ``${iot:Connection.Thing.ThingName}``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_gateway.config import greengrass
from edge_gateway.config.model import (
    GatewayConfig,
    HeartbeatSettings,
    IotCoreDestination,
    ShadowSettings,
    SiteWiseDestination,
)
from edge_gateway.control.desired import effective_config
from edge_gateway.errors import ConfigError

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
THING = "line1-gw"
THING_VARIABLE = "${iot:Connection.Thing.ThingName}"
PLC_NETWORK = "10.0.4.0/24"  # what the fleet's <PLC_NETWORK> stands for in the examples of deploy/fleet/


@pytest.fixture(scope="module")
def recipe() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "recipe.yaml").read_text(encoding="utf-8"))
    return loaded


def run_environment(recipe: dict[str, Any], merge: dict[str, Any], thing: str, work: Path) -> dict[str, str]:
    """What the Run step's Setenv gives the gateway on ``thing`` after a deployment's merge."""
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    configuration = {**defaults, **merge}
    env = {
        "AWS_IOT_THING_NAME": thing,
        "GG_ROOT_CA_PATH": "/greengrass/v2/rootCA.pem",
        "AWS_REGION": "eu-west-1",
        "EDGE_GATEWAY_WORK_DIR": str(work),
    }
    for name, value in recipe["Manifests"][0]["Lifecycle"]["Run"]["Setenv"].items():
        key = re.fullmatch(r"\{configuration:/(\w+)\}", value)
        if key:
            item = configuration[key.group(1)]
            env[name] = json.dumps(item, sort_keys=True) if isinstance(item, dict) else str(item)
    return env


def gateway_merge(doc: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    gateway = doc["components"][recipe["ComponentName"]]
    assert gateway["componentVersion"] == recipe["ComponentVersion"]
    assert gateway["configurationUpdate"]["reset"] == ["/gatewayConfig"]  # a merge never removes a key
    merge: dict[str, Any] = json.loads(gateway["configurationUpdate"]["merge"])  # the API takes a JSON string
    assert set(merge) <= set(recipe["ComponentConfiguration"]["DefaultConfiguration"])
    merge["endpoint"] = merge["endpoint"].replace("<IOT_ENDPOINT>", "abc-ats.iot.eu-west-1.amazonaws.com")
    return merge


def nucleus_merge(doc: dict[str, Any]) -> dict[str, Any]:
    merge: dict[str, Any] = json.loads(doc["components"]["aws.greengrass.Nucleus"]["configurationUpdate"]["merge"])
    return merge


# --- one device: deploy/deployment.json ----------------------------------------------------------------------


def test_deployment_document_configures_the_gateway_and_the_nucleus_for_port_443(
    recipe: dict[str, Any], tmp_path: Path
) -> None:
    doc = json.loads((DEPLOY / "deployment.json").read_text(encoding="utf-8"))
    assert doc["targetArn"].startswith("arn:aws:iot:")
    assert nucleus_merge(doc) == {
        "interpolateComponentConfiguration": True,
        "greengrassDataPlanePort": 443,
        "mqtt": {"port": 443},
    }
    config, _ = greengrass.load(run_environment(recipe, gateway_merge(doc, recipe), THING, tmp_path))
    assert config.gateway.thing_name == THING
    assert config.client_id == f"{THING}-gateway"
    assert config.publisher.mqtt.port == 443
    assert {s.name for s in config.sources} == {"boiler", "press"}


# --- a fleet: deploy/fleet-deployment.json and deploy/fleet/<thing>.json ----------------------------------------


def fleet_merge(recipe: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads((DEPLOY / "fleet-deployment.json").read_text(encoding="utf-8"))
    merge = gateway_merge(doc, recipe)
    text = json.dumps(merge).replace("<PLC_NETWORK>", PLC_NETWORK)
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def test_the_fleet_deployment_targets_a_thing_group_and_holds_nothing_per_device(recipe: dict[str, Any]) -> None:
    doc = json.loads((DEPLOY / "fleet-deployment.json").read_text(encoding="utf-8"))
    assert re.fullmatch(r"arn:aws:iot:<REGION>:<ACCOUNT_ID>:thinggroup/<THING_GROUP>", doc["targetArn"])
    assert nucleus_merge(doc) == nucleus_merge(json.loads((DEPLOY / "deployment.json").read_text(encoding="utf-8")))
    merge = fleet_merge(recipe)
    # The same for every gateway: the endpoint and the PLC network the shadows may point sources at.
    assert merge["gatewayConfig"] == {"shadow": {"allowed_source_hosts": [PLC_NETWORK]}}
    assert "<THING_NAME>" not in json.dumps(doc)


def fleet_gateway(recipe: dict[str, Any], thing: str, work: Path) -> GatewayConfig:
    config, _ = greengrass.load(run_environment(recipe, fleet_merge(recipe), thing, work))
    return config


@pytest.mark.parametrize("thing", ["line1-gw", "line2-gw"])
def test_every_gateway_of_the_fleet_starts_empty_as_itself(recipe: dict[str, Any], tmp_path: Path, thing: str) -> None:
    config = fleet_gateway(recipe, thing, tmp_path)
    assert config.sources == []
    assert config.gateway.thing_name == thing
    assert config.client_id == f"{thing}-gateway"
    (destination,) = config.publisher.destinations  # the component's default: IoT Core on dt/<thing>/<source>
    assert (destination.type, destination.name) == ("iotcore", "cloud")
    assert destination.topic == IotCoreDestination(type="iotcore", name="d").topic
    assert config.shadow.enabled
    assert config.shadow.name == ShadowSettings().name  # each gateway's own named shadow


def test_each_fleet_desired_document_is_accepted_by_its_gateway(recipe: dict[str, Any], tmp_path: Path) -> None:
    folder = sorted((DEPLOY / "fleet").glob("*.json"))
    assert [p.stem for p in folder] == ["line1-gw", "line2-gw"]
    for path in folder:
        payload = json.loads(path.read_text(encoding="utf-8"))
        assert list(payload) == ["state"]  # the update-thing-shadow payload as it is pushed
        assert list(payload["state"]) == ["desired"]
        local = fleet_gateway(recipe, path.stem, tmp_path / path.stem)
        config = effective_config(local, payload["state"]["desired"])
        assert config.sources
        assert config.gateway.thing_name == path.stem


def test_a_fleet_desired_document_outside_the_plc_network_is_refused(recipe: dict[str, Any], tmp_path: Path) -> None:
    local = fleet_gateway(recipe, THING, tmp_path)
    desired = json.loads((DEPLOY / "fleet" / f"{THING}.json").read_text(encoding="utf-8"))["state"]["desired"]
    desired["sources"][0]["host"] = "192.168.1.20"
    with pytest.raises(ConfigError, match="allowed_source_hosts"):
        effective_config(local, desired)


def test_an_empty_gateway_config_is_refused_with_what_a_fleet_sets(recipe: dict[str, Any], tmp_path: Path) -> None:
    merge = {"endpoint": "abc-ats.iot.eu-west-1.amazonaws.com", "gatewayConfig": {}}
    with pytest.raises(ConfigError, match=r"gatewayConfig needs only shadow\.allowed_source_hosts"):
        greengrass.load(run_environment(recipe, merge, THING, tmp_path))


# --- the IoT policy: one document for every gateway ----------------------------------------------------------


def _grants(policy: dict[str, Any], action: str, resource: str, thing: str) -> bool:
    """AWS IoT policy evaluation for Allow statements, on a connection of ``thing``'s exclusively attached
    certificate: '*' and '?' wildcards, '+' and '#' literal, the thing policy variable substituted."""
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        condition = statement.get("Condition", {})
        assert condition in ({}, {"Bool": {"iot:Connection.Thing.IsAttached": "true"}})
        if statement["Effect"] == "Allow" and action in actions:
            for written in resources:
                pattern = written.replace(THING_VARIABLE, thing)
                regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
                if re.fullmatch(regex, resource):
                    return True
    return False


def policy() -> dict[str, Any]:
    text = (DEPLOY / "iot-policy.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text.replace("<REGION>", "eu-west-1").replace("<ACCOUNT_ID>", "123456789012"))
    return loaded


@pytest.mark.parametrize("thing", ["line1-gw", "press-hall-7_gw:2"])
def test_iot_policy_allows_what_each_gateway_does_on_its_own_thing_and_nothing_else(thing: str) -> None:
    doc = policy()
    arn = "arn:aws:iot:eu-west-1:123456789012:"
    shadow = f"$aws/things/{thing}/shadow/name/{ShadowSettings().name}"
    data = IotCoreDestination(type="iotcore", name="d").topic.format(thing=thing, source="boiler")
    sitewise = SiteWiseDestination(type="sitewise", name="s").topic.format(type="double", thing=thing, source="boiler")
    status = HeartbeatSettings().topic.format(thing=thing)  # presence, heartbeat and the Last Will
    answers = ("get/accepted", "get/rejected", "update/accepted", "update/rejected", "update/delta")
    allowed = [
        ("iot:Connect", f"client/{thing}-gateway"),
        *[("iot:Publish", f"topic/{t}") for t in (data, sitewise, status, f"{shadow}/get", f"{shadow}/update")],
        *[("iot:Subscribe", f"topicfilter/{shadow}/{a}") for a in answers],
        *[("iot:Receive", f"topic/{shadow}/{a}") for a in answers],
    ]
    for action, resource in allowed:
        assert _grants(doc, action, arn + resource, thing), (action, resource)
    other = "line9-gw"
    denied = [
        ("iot:Connect", f"client/{thing}"),  # the nucleus' client id
        ("iot:Connect", f"client/{other}-gateway"),  # another gateway's
        ("iot:Publish", f"topic/dt/{other}/boiler"),
        ("iot:Publish", f"topic/dt/{thing}x/boiler"),
        ("iot:Publish", f"topic/$aws/things/{other}/shadow/name/{ShadowSettings().name}/update"),
        ("iot:Subscribe", f"topicfilter/$aws/things/{other}/shadow/name/{ShadowSettings().name}/update/delta"),
        ("iot:Receive", f"topic/$aws/things/{other}/shadow/name/{ShadowSettings().name}/update/delta"),
        ("iot:Publish", f"topic/{shadow}/delete"),
        ("iot:Publish", f"topic/$aws/things/{thing}/shadow/update"),  # the classic shadow
        ("iot:Publish", f"topic/$aws/things/{thing}/shadow/name/other/update"),
        ("iot:Publish", "topic/$aws/rules/other_rule/x"),
        ("iot:Subscribe", "topicfilter/#"),
        ("iot:Subscribe", f"topicfilter/dt/{thing}/#"),
        ("iot:Receive", f"topic/dt/{thing}/boiler"),
        ("iot:RetainPublish", f"topic/{status}"),
        ("iot:UpdateThingShadow", f"thing/{thing}"),
    ]
    for action, resource in denied:
        assert not _grants(doc, action, arn + resource, thing), (action, resource)
    assert all(s["Effect"] == "Allow" and "*" not in s["Action"] for s in doc["Statement"])


def test_iot_policy_names_no_thing_and_needs_an_attached_certificate() -> None:
    text = (DEPLOY / "iot-policy.json").read_text(encoding="utf-8")
    assert "<THING_NAME>" not in text
    assert set(re.findall(r"\$\{[^}]+\}", text)) == {THING_VARIABLE}
    (connect,) = [s for s in policy()["Statement"] if s["Action"] == "iot:Connect"]
    # Without an attached thing the variable does not resolve: refuse such a connection outright.
    assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}


def test_iot_policy_fits_the_2048_character_limit() -> None:
    text = (DEPLOY / "iot-policy.json").read_text(encoding="utf-8")
    filled = text.replace("<REGION>", "ap-southeast-2").replace("<ACCOUNT_ID>", "123456789012")
    assert len(re.sub(r"\s", "", filled)) <= 2048  # variables count as written, whatever the thing name


def test_the_docs_attach_the_certificate_as_an_exclusive_thing_principal() -> None:
    docs = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert "--thing-principal-type EXCLUSIVE_THING" in docs


# --- the nucleus, the placeholders ---------------------------------------------------------------------------


def test_init_config_puts_the_nucleus_on_port_443() -> None:
    doc = yaml.safe_load((DEPLOY / "greengrass-config.yaml").read_text(encoding="utf-8"))
    nucleus = doc["services"]["aws.greengrass.Nucleus"]["configuration"]
    assert nucleus["greengrassDataPlanePort"] == 443
    assert nucleus["mqtt"]["port"] == 443
    assert nucleus["interpolateComponentConfiguration"] is True


def test_placeholders_are_the_documented_ones() -> None:
    docs = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            for placeholder in set(re.findall(r"<[A-Z_]+>", path.read_text(encoding="utf-8"))):
                assert placeholder in docs, (path.name, placeholder)
