"""The locked requirements: complete, hashed, fresh, and installable where people work.

``requirements.txt`` and ``requirements-dev.txt`` are made by ``make lock``
(``uv pip compile --universal --generate-hashes``) from the short lists in
``requirements*.in``. The dev lock is resolved here for Linux x86_64, Linux
aarch64 and macOS 14 arm64 by uv, which reads PyPI's indexes (pip's
``--platform`` takes wheels only, and pyvips ships an sdist): a package
without a distribution for one of them fails its row.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from classifier.assets import ROOT

PLATFORMS = {
    "Linux x86_64": "x86_64-manylinux_2_28",
    "Linux aarch64": "aarch64-manylinux_2_28",
    "macOS 14 arm64": "aarch64-apple-darwin",
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)


def uv(*args: str | Path, **environment: str) -> subprocess.CompletedProcess[str]:
    """uv from this environment (the dev lock installs it), on the repository's files."""
    env = {**os.environ, **environment}
    return subprocess.run(
        [sys.executable, "-m", "uv", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def pins(lock: str) -> dict[str, str]:
    return {name.lower(): version for name, version in PIN.findall(lock)}


def requirements(path: Path) -> list[str]:
    """A lock's entries: each pinned line with its hashes, joined."""
    return re.split(r"\n(?=[A-Za-z0-9])", path.read_text().split("\n", 2)[2].strip())


@pytest.mark.parametrize("lock", ["requirements.txt", "requirements-dev.txt"])
def test_every_package_is_pinned_with_hashes(lock: str) -> None:
    entries = [entry for entry in requirements(ROOT / lock) if not entry.startswith("#")]
    assert len(entries) > 50
    for entry in entries:
        assert PIN.match(entry), entry.splitlines()[0]
        assert "--hash=sha256:" in entry, f"{entry.splitlines()[0]} has no hash"


def test_the_runtime_lock_has_no_tensorflow_and_the_dev_lock_the_same_versions() -> None:
    runtime = pins((ROOT / "requirements.txt").read_text())
    dev = pins((ROOT / "requirements-dev.txt").read_text())
    assert not {name for name in runtime if name.startswith(("tensorflow", "keras"))}
    assert {"python-multipart", "pydantic-settings", "onnxruntime"} <= runtime.keys()
    assert {name: dev[name] for name in runtime} == runtime


def test_the_top_level_lists_name_what_the_app_imports_directly() -> None:
    """``python-multipart`` must be ours, not something Gradio happens to bring."""
    listed = pins((ROOT / "requirements.in").read_text())
    assert {"fastapi", "gradio", "onnxruntime", "python-multipart", "pydantic-settings"} <= set(
        listed
    )
    assert pins((ROOT / "requirements.txt").read_text()).items() >= listed.items()


def test_the_locks_are_fresh(tmp_path: Path) -> None:
    """``make lock`` after editing a ``.in`` file: compiling again changes nothing
    (uv keeps the locked versions it is given as the output file)."""
    python = (ROOT / ".python-version").read_text().strip()
    common = ["--quiet", "--universal", "--generate-hashes", "--python-version", python]
    common += ["--custom-compile-command", "make lock"]
    for source, lock, extra in [
        ("requirements.in", "requirements.txt", []),
        ("requirements-dev.in", "requirements-dev.txt", ["--constraint", "requirements.txt"]),
    ]:
        fresh = tmp_path / lock
        shutil.copy(ROOT / lock, fresh)
        done = uv("pip", "compile", *common, source, *extra, "-o", fresh)
        assert done.returncode == 0, done.stderr
        assert fresh.read_text() == (ROOT / lock).read_text(), f"run `make lock`: {lock} is stale"


@pytest.mark.parametrize("platform", PLATFORMS.values(), ids=PLATFORMS.keys())
def test_the_dev_lock_resolves_for(platform: str, tmp_path: Path) -> None:
    resolved = tmp_path / "resolved.txt"
    done = uv(
        "pip",
        "compile",
        "--quiet",
        "--no-header",
        "--python-version",
        (ROOT / ".python-version").read_text().strip(),
        "--python-platform",
        platform,
        "requirements-dev.txt",
        "-o",
        resolved,
        MACOSX_DEPLOYMENT_TARGET="14.0",
    )
    assert done.returncode == 0, done.stderr
    locked = pins((ROOT / "requirements-dev.txt").read_text())
    here = pins(resolved.read_text())
    assert here.items() <= locked.items()  # nothing new, nothing moved
    tensorflow = "tensorflow-cpu" if platform.startswith("x86_64-manylinux") else "tensorflow"
    assert here[tensorflow] == "2.21.0"
