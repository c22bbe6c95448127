"""What gdk and Greengrass accept, checked before anything is built: gdk-config.json and the recipe.

- ``gdk_config_problems(doc)``: what gdk's config schema would refuse in gdk-config.json, plus what this
  build needs: the ``custom`` build system running ``BUILD_COMMAND`` (as a list: gdk runs a string as one
  program name) and ``build.options.zip_name`` (the artifact's name, without ``.zip``); one message per
  broken rule, ``[]`` when it is fine. ``read_component(root)`` reads the file through it and returns the one
  ``Component``, or raises BuildError (also for ``NEXT_PATCH``, which needs gdk and AWS credentials).
- ``recipe_problems(recipe)``: the rules of gdk's recipe schema (draft-7, on the lower-cased recipe) this
  component can break; ``[]`` when it validates. ``read_recipe(path)`` makes gdk's own input checks, in its
  order: at most 16,000 bytes on disk, then a YAML mapping.

Pure checks: nothing here writes a file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import BuildError

RECIPE_MAX_BYTES = 16_000
# What gdk-config.json's custom_build_command must be: `gdk component build` runs it in the project folder.
BUILD_COMMAND = ("python3", "scripts/build_component.py")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_COMPONENT_NAME = re.compile(r"^[a-zA-Z0-9-_.]+$")


@dataclass(frozen=True, slots=True)
class Component:
    """The one component of gdk-config.json."""

    name: str
    version: str
    author: str
    zip_name: str
    bucket: str
    region: str

    @property
    def zip_file(self) -> str:
        return f"{self.zip_name}.zip"


def gdk_config_problems(doc: Any) -> list[str]:  # noqa: ANN401, C901 - raw JSON, one check per rule
    """What gdk's config schema would refuse, plus what this build needs (the custom command, zip_name)."""
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
    if build.get("build_system") != "custom":
        problems.append(f"build.build_system must be 'custom' (is {build.get('build_system')!r})")
    if build.get("custom_build_command") != list(BUILD_COMMAND):
        problems.append(
            f"build.custom_build_command must be {list(BUILD_COMMAND)} (is {build.get('custom_build_command')!r})"
        )
    options = build.get("options", {})
    zip_name = options.get("zip_name")
    if not isinstance(zip_name, str) or not zip_name:
        problems.append("build.options.zip_name is required: the artifact's name, which the recipe's URI names")
    elif zip_name.endswith(".zip"):
        problems.append(f"zip_name {zip_name!r} must not end with .zip (the artifact would be {zip_name}.zip)")
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
        bucket=comp["publish"]["bucket"],
        region=comp["publish"].get("region", ""),
    )


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
