"""``greengrass-build/`` as ``gdk component publish`` (gdk CLI 1.6.2) takes it from a ``custom`` build.

gdk's ``custom`` build system empties ``greengrass-build/``, creates ``recipes/`` and
``artifacts/<name>/<version>/`` and runs ``custom_build_command`` as it is; it then transforms nothing.
``gdk component publish`` uploads every file of ``artifacts/<name>/<version>/``, reads
``recipes/recipe.yaml`` (its ``ComponentName`` must be the configured one), rewrites each ``s3://`` URI
whose file it uploaded to ``s3://<bucket>/<name>/<version>/<file>`` and creates the component version.
So the build writes what gdk's own zip build would have written:

- ``deterministic_zip(src, zip_path)``: the files under ``src`` (here ``wheels/``), no wrapper folder,
  sorted, every entry dated 1980-01-01 with mode 0644, stored (wheels are zips already; deflate's output
  would depend on the zlib build): the same inputs give the same bytes on any machine.
- ``transform_recipe``: ``ComponentName``, ``ComponentVersion`` and ``ComponentPublisher`` from
  gdk-config.json and every ``s3://`` artifact the build made rewritten to
  ``s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/<file>`` (as gdk's zip build does); an artifact that
  was not built is a BuildError. Recipe keys are matched without case, as gdk reads them.
- ``write_component(root, component, staged)``: both into ``greengrass-build/``, the recipe checked as gdk
  checks it (``rules``: size, schema) and re-dumped with ``yaml.safe_dump(sort_keys=False)``; returns
  (built recipe, artifact zip).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import BuildError
from .rules import Component, read_recipe, recipe_problems
from .wheelhouse import ZIP_DATE

S3_PREFIX = "s3://"
BUILT_URI = "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION"


def deterministic_zip(src: Path, zip_path: Path) -> Path:
    """``src``'s files (and folders) zipped with no wrapper folder, in a fixed order, with fixed dates and modes."""
    paths = sorted(src.rglob("*"), key=lambda p: p.relative_to(src).as_posix())
    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in paths:
            name = path.relative_to(src).as_posix()
            if path.is_dir():
                entry = zipfile.ZipInfo(name + "/", ZIP_DATE)
                entry.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(entry, b"")
                continue
            entry = zipfile.ZipInfo(name, ZIP_DATE)
            entry.external_attr = 0o100644 << 16
            entry.compress_type = zipfile.ZIP_STORED  # wheels are zips already; stored bytes do not depend on zlib
            zf.writestr(entry, path.read_bytes())
    return zip_path


def _key(mapping: Mapping[str, Any], wanted: str) -> str:
    """The key of ``mapping`` equal to ``wanted`` ignoring case (gdk reads recipes case-insensitively)."""
    return next((k for k in mapping if k.lower() == wanted.lower()), wanted)


def transform_recipe(recipe: dict[str, Any], component: Component, built: set[str]) -> dict[str, Any]:
    """Name, version, publisher and the URIs of built artifacts, as gdk's build transform sets them."""
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
                raise BuildError(f"{msg} (built: {sorted(built)})")
            artifact[uri_key] = f"{BUILT_URI}/{file_name}"
    return out


def write_component(root: Path, component: Component, staged: Path) -> tuple[Path, Path]:
    """``greengrass-build/``: the recipe and ``<zip_name>.zip`` of ``staged``; returns (recipe, artifact)."""
    recipes_found = [p for p in (root / "recipe.yaml", root / "recipe.json") if p.is_file()]
    if len(recipes_found) != 1:
        raise BuildError(f"{root} needs exactly one of recipe.yaml and recipe.json (found {len(recipes_found)})")
    if recipes_found[0].suffix != ".yaml":
        raise BuildError("this build writes YAML recipes only")
    recipe = transform_recipe(read_recipe(recipes_found[0]), component, {component.zip_file})
    problems = recipe_problems(recipe)
    if problems:
        raise BuildError(
            f"{recipes_found[0]} does not validate against the Greengrass recipe schema: {'; '.join(problems)}"
        )
    out = root / "greengrass-build"
    shutil.rmtree(out, ignore_errors=True)  # gdk empties it before the custom command too
    recipes = out / "recipes"
    artifacts = out / "artifacts" / component.name / component.version
    recipes.mkdir(parents=True)
    artifacts.mkdir(parents=True)
    artifact = deterministic_zip(staged, artifacts / component.zip_file)
    built_recipe = recipes / recipes_found[0].name
    with built_recipe.open("w", encoding="utf-8") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
    return built_recipe, artifact


def artifact_uris(recipe: Mapping[str, Any]) -> Iterator[str]:
    for manifest in recipe.get(_key(recipe, "Manifests"), []):
        for artifact in manifest.get(_key(manifest, "Artifacts"), []):
            yield str(artifact.get(_key(artifact, "URI"), ""))
