"""What ``gdk component build`` (gdk CLI 1.6.2, zip build) produces, made without gdk once ``wheels/`` is there.

- Zip build (``zip_build``): the project minus ``gdk-config.json``, ``greengrass-build/``, the recipe and the
  ``excludes`` globs (gdk's ``glob.glob(root/pattern, recursive=True)``, ``excluded_paths``) is copied to
  ``zip-build/<folder name>/`` (left behind, as gdk does) and zipped without a wrapper folder as
  ``zip-build/<zip_name>.zip``.
- Recipe transform (``transform_recipe``): ``ComponentName``, ``ComponentVersion`` and
  ``ComponentPublisher`` overwritten from gdk-config.json and every ``s3://`` artifact whose file was built
  rewritten to ``s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/<file>``; an artifact that was not built
  is a BuildError (gdk would look on S3). Recipe keys are matched without case, as gdk reads them.
- ``gdk_build(root, component)`` does both into ``greengrass-build/``: ``recipes/recipe.yaml`` re-dumped with
  ``yaml.safe_dump(sort_keys=False)`` after the checks of ``rules`` (size, schema), and the zip in
  ``artifacts/<name>/<version>/``; it returns (built recipe, artifact zip).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import BuildError
from .rules import Component, read_recipe, recipe_problems

S3_PREFIX = "s3://"
BUILT_URI = "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION"
# gdk always leaves these out of the zip (at the project root), besides the configured excludes.
GDK_ALWAYS_EXCLUDED = ("gdk-config.json", "greengrass-build")


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
