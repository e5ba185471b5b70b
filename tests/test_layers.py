"""The two packages keep one direction: the service imports the core, never the reverse."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from classifier.assets import ROOT

SERVICE_LIBRARIES = (
    "fastapi",
    "starlette",
    "gradio",
    "uvicorn",
    "prometheus_client",
    "pydantic_settings",
    "service",
)


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports, wherever in it (deferred imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_of_the_core_imports_the_service() -> None:
    offenders = {
        path.name: sorted(imported_packages(path) & set(SERVICE_LIBRARIES))
        for path in sorted((ROOT / "classifier").glob("*.py"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_public_api_loads_nothing_of_the_service() -> None:
    code = (
        "import sys\n"
        "from classifier import Classifier\n"
        "assert Classifier.__module__ == 'classifier.model'\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {SERVICE_LIBRARIES!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_settings_load_neither_libvips_nor_onnx_runtime() -> None:
    code = (
        "import sys, service.settings\n"
        "print(sorted(m for m in ('pyvips', 'onnxruntime') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
