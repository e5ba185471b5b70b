"""What Heroku reads to deploy: ``app.json`` (the Deploy button) and ``project.toml`` (Fir).

``app.json`` is checked against the fields Heroku's app.json schema
documents (https://devcenter.heroku.com/articles/app-json-schema), and its
settings against the README's settings table: the button must offer the
defaults the app has. ``project.toml`` must keep out of Fir's image what
``.slugignore`` keeps out of Cedar's slug, and run the same slimming step.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest

from classifier.assets import DEFAULT_MODEL_PATH, ROOT

APP_JSON_FIELDS = {
    "name": str,
    "description": str,
    "keywords": list,
    "website": str,
    "repository": str,
    "logo": str,
    "success_url": str,
    "scripts": dict,
    "env": dict,
    "formation": dict,
    "image": str,
    "addons": list,
    "buildpacks": list,
    "environments": dict,
    "stack": str,
}
"""Every top-level field Heroku documents, with its JSON type."""
ENV_FIELDS = {"description": str, "value": str, "required": bool, "generator": str}
FORMATION_FIELDS = {"quantity": int, "size": str}
DYNO_SIZES = {
    "eco",
    "basic",
    "standard-1x",
    "standard-2x",
    "performance-m",
    "performance-l",
    "performance-l-ram",
    "performance-xl",
    "performance-2xl",
    "private-s",
    "private-m",
    "private-l",
    "shield-s",
    "shield-m",
    "shield-l",
}


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    """Where ``manifest`` strays from Heroku's documented app.json fields."""
    errors = [f"unknown field {key!r}" for key in manifest.keys() - APP_JSON_FIELDS.keys()]
    errors += [
        f"{key} is not a {kind.__name__}"
        for key, kind in APP_JSON_FIELDS.items()
        if key in manifest and not isinstance(manifest[key], kind)
    ]
    if len(manifest.get("name", "")) > 30:
        errors.append("name is over 30 characters")
    for name, entry in manifest.get("env", {}).items():
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            errors.append(f"env {name} is not a config var name")
        if not isinstance(entry, dict):
            errors.append(f"env {name} is not an object")
            continue
        errors += [f"env {name}: unknown field {key!r}" for key in entry.keys() - ENV_FIELDS]
        errors += [
            f"env {name}: {key} is not a {kind.__name__}"
            for key, kind in ENV_FIELDS.items()
            if key in entry and not isinstance(entry[key], kind)
        ]
        # Heroku requires a var unless told otherwise: one without a value would block the form.
        if entry.get("required", True) and "value" not in entry:
            errors.append(f"env {name} is required but has no value")
    for process, entry in manifest.get("formation", {}).items():
        errors += [
            f"formation {process}: unknown field {key!r}" for key in entry.keys() - FORMATION_FIELDS
        ]
        if not isinstance(entry.get("quantity", 1), int):
            errors.append(f"formation {process}: quantity is not an integer")
        if entry.get("size", "basic").lower() not in DYNO_SIZES:
            errors.append(f"formation {process}: size {entry['size']!r} is not a dyno size")
    for buildpack in manifest.get("buildpacks", []):
        if set(buildpack) != {"url"}:
            errors.append(f"buildpack {buildpack} needs exactly a url")
    return errors


def readme_settings() -> dict[str, str]:
    """The README settings table: variable -> its default, as written there."""
    rows = re.findall(r"^\| `([A-Z_]+)` \| `?([^|`]*)`? \|", (ROOT / "README.md").read_text(), re.M)
    return dict(rows)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return json.loads((ROOT / "app.json").read_text())


def test_app_json_uses_only_the_fields_heroku_documents(manifest: dict[str, Any]) -> None:
    assert schema_errors(manifest) == []


@pytest.mark.parametrize(
    ("broken", "error"),
    [
        ({"env": {"MAX_BATCH": {"default": "2"}}}, "unknown field 'default'"),
        ({"env": {"MAX_BATCH": {"value": 2}}}, "value is not a str"),
        ({"env": {"MAX_BATCH": {"description": "x"}}}, "required but has no value"),
        ({"formation": {"web": {"quantity": 1, "size": "huge"}}}, "not a dyno size"),
        ({"dynos": 1}, "unknown field 'dynos'"),
    ],
)
def test_the_schema_check_catches_mistakes(
    manifest: dict[str, Any], broken: dict[str, Any], error: str
) -> None:
    assert any(error in message for message in schema_errors({**manifest, **broken}))


def test_app_json_offers_the_apps_defaults_on_a_basic_dyno(manifest: dict[str, Any]) -> None:
    documented = readme_settings()
    assert {"MODEL_PATH", "MEMORY_BUDGET_MB", "ADMISSION_TIMEOUT", "MAX_BATCH"} <= manifest[
        "env"
    ].keys()
    for name, entry in manifest["env"].items():
        assert entry["description"], name
        # One unset by default (privacy's) is offered empty, or generated.
        offered = entry.get("value", "unset")
        assert offered == documented[name], f"{name}: app.json and README disagree"
    assert manifest["formation"] == {"web": {"quantity": 1, "size": "basic"}}
    assert ROOT / manifest["env"]["MODEL_PATH"]["value"] == DEFAULT_MODEL_PATH


def test_readme_has_the_deploy_button() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "(https://www.heroku.com/deploy" in readme
    assert "https://www.herokucdn.com/deploy/button.svg" in readme


def slugignore_patterns() -> set[str]:
    lines = (ROOT / ".slugignore").read_text().splitlines()
    return {line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")}


def test_fir_excludes_what_cedar_leaves_out_and_runs_the_same_slimming() -> None:
    project = tomllib.loads((ROOT / "project.toml").read_text())
    buildpacks = project["io"]["buildpacks"]
    assert set(buildpacks["exclude"]) == slugignore_patterns()
    assert not [pattern for pattern in buildpacks["exclude"] if pattern.endswith("/")]
    group = buildpacks["group"]
    assert group[0]["id"] == "heroku/python"
    assert group[-1]["id"] == "heroku/procfile"  # an explicit group replaces detection
    inline = [entry["script"]["inline"] for entry in group if "script" in entry]
    assert inline == ["bin/post_compile"]
    assert (ROOT / "bin" / "post_compile").stat().st_mode & 0o111
