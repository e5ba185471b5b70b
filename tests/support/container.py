"""The app as an OCI image, built and run with podman: for the container tests and benchmarks.

No container registry is reachable here, so ``python:3.11-slim`` is a
stand-in: Debian 12's Python 3.11 made into an image with mmdebstrap and
imported under that name, once per machine (podman keeps it). Images are
built from a clean export of the repository (the files git tracks, as the
work tree has them) with the model to serve put into its ``models/``.
This sandbox refuses crun and podman's default ulimits, so every call uses
runc and a ``containers.conf`` without default ulimits. A container's memory
is read from its own cgroup, where the kernel enforces ``--memory``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier.assets import ROOT
from tests.support.budgets import START_UP_WAIT_S

log = logging.getLogger(__name__)

BASE_IMAGE = "docker.io/library/python:3.11-slim"
STAND_IN_PACKAGES = "python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
"""pip inside the build reaches the registry only with the host's CA bundle."""
TOOLS = ("podman", "runc", "mmdebstrap")
CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMORY_LIMIT_MB = 512
"""A basic dyno's memory, and the limit deploy/ gives the float32 image."""
INT8_MEMORY_LIMIT_MB = 320
"""The limit deploy/ and the README give the int8 image. It held the hostile burst at
272 MiB (256 MiB: OOM-killed, ``benchmarks/oci_image.py --find-limit``) before the
decoder jail added its processes (~25 MB at idle)."""
KILLED = 137
"""Exit code of a process killed by SIGKILL, which is how the OOM killer ends it."""


class PodmanError(RuntimeError):
    """A podman command failed; the message carries its stderr."""


def unavailable() -> str | None:
    """Why images cannot be built and run here, or None when they can."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{' '.join(missing)} not installed (apt-get install podman runc mmdebstrap)"
    if os.geteuid() != 0:
        return "not root: the memory limits need podman's rootful cgroups"
    return None


def _containers_conf() -> Path:
    """A containers.conf without default ulimits, which this sandbox refuses."""
    path = Path(tempfile.gettempdir()) / "slim-inception-containers.conf"
    if not path.is_file():
        path.write_text("[containers]\ndefault_ulimits = []\n")
    return path


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """``podman --runtime runc ARGS``; with ``check``, ``PodmanError`` (its stderr) on failure."""
    result = subprocess.run(
        ["podman", "--runtime", "runc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CONTAINERS_CONF": str(_containers_conf())},
    )
    if check and result.returncode != 0:
        raise PodmanError(
            f"podman {' '.join(args[:2])} exited {result.returncode}:\n{result.stderr[-3000:]}"
        )
    return result


def ensure_base(folder: Path) -> None:
    """Import the stand-in base unless podman holds one under its name (~1 min, once)."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return
    tar = folder / "base.tar"
    log.info("making the stand-in %s with mmdebstrap", BASE_IMAGE)
    subprocess.run(
        [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={STAND_IN_PACKAGES}",
            '--customize-hook=rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
            "bookworm",
            str(tar),
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    podman("import", str(tar), BASE_IMAGE, timeout=300)
    tar.unlink()


def model_files(model: Path) -> list[Path]:
    """The model, its metadata, and the class weights file its metadata names (if any)."""
    metadata = model.with_suffix(".json")
    heatmap = json.loads(metadata.read_text()).get("heatmap") or {}
    extra = [model.parent / heatmap["class_weights"]] if heatmap.get("class_weights") else []
    return [model, metadata, *extra]


def export(destination: Path, models: Iterable[Path]) -> Path:
    """The files git tracks, as they are in the work tree, with ``models`` in ``models/``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted in the work tree is not exported
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for model in models:
        for path in model_files(model):
            shutil.copy2(path, destination / "models" / path.name)
    return destination


def dockerfile_instructions() -> dict[str, list[str]]:
    """Each instruction of the Dockerfile, continuation lines joined: name -> arguments."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, rest = line.strip().partition(" ")
            found.setdefault(name.upper(), []).append(rest)
    return found


def image_port() -> int:
    """The ``PORT`` the Dockerfile sets: where the image listens unless the host says."""
    for environment in dockerfile_instructions()["ENV"]:
        if found := re.search(r"\bPORT=(\d+)", environment):
            return int(found.group(1))
    raise AssertionError("the Dockerfile sets no PORT")


def build(context: Path, tag: str, *build_args: str) -> str:
    """Build ``context``'s Dockerfile as ``tag`` from the local base, never pulling."""
    podman(
        "build",
        "--pull=never",
        "--network",
        "host",
        "--format",
        "docker",  # OCI images have no HEALTHCHECK
        "--volume",
        f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
        "--tag",
        tag,
        *(f"--build-arg={argument}" for argument in build_args),
        str(context),
        timeout=1800,
    )
    return tag


def image(name: str) -> dict[str, Any]:
    return json.loads(podman("image", "inspect", name).stdout)[0]


def size_above_base(name: str, base: str = BASE_IMAGE) -> int:
    """Bytes of ``name``'s layers above ``base``'s (uncompressed, as podman counts them)."""
    below = image(base)["RootFS"]["Layers"]
    if image(name)["RootFS"]["Layers"][: len(below)] != below:
        raise PodmanError(f"{name} is not built on {base}")
    return image(name)["Size"] - image(base)["Size"]


@dataclass
class Container:
    """A running container of the app: its name, where it answers, when it was started."""

    name: str
    url: str
    started: float
    ready_after: float = 0.0

    def state(self) -> dict[str, Any]:
        return json.loads(podman("inspect", self.name).stdout)[0]["State"]

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def _cgroup(self, *names: str) -> Path | None:
        """The container's memory cgroup file, cgroup v1 or v2; None once it is gone."""
        path = self.state().get("CgroupPath", "")
        for folder in (CGROUP_ROOT / "memory" / path.lstrip("/"), CGROUP_ROOT / path.lstrip("/")):
            for name in names:
                if path and (folder / name).is_file():
                    return folder / name
        return None

    def peak_memory(self) -> int:
        """The cgroup's high-water mark, bytes: what the kernel held the limit against."""
        file = self._cgroup("memory.max_usage_in_bytes", "memory.peak")
        if file is None:
            raise PodmanError(f"{self.name} has no memory cgroup (not running?)")
        return int(file.read_text())

    def reset_peak(self) -> None:
        file = self._cgroup("memory.max_usage_in_bytes", "memory.peak")
        if file is not None:
            file.write_text("0")

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer ended in the container's cgroup (while it lives)."""
        file = self._cgroup("memory.oom_control", "memory.events")
        if file is None:
            return 0
        fields = dict(line.split() for line in file.read_text().splitlines())
        return int(fields.get("oom_kill", 0))

    def oom_killed(self) -> bool:
        """Whether any process was OOM-killed: podman's flag, the kernel's count, or a
        death by SIGKILL nobody sent (podman's flag stays false on this cgroup v1 host)."""
        state = self.state()
        if state["OOMKilled"] or self.oom_kills() > 0:
            return True
        return not state["Running"] and state["ExitCode"] == KILLED

    def pid1_uid(self) -> int:
        """The real user id the app's process runs as, read from the host's /proc."""
        status = Path(f"/proc/{self.state()['Pid']}/status").read_text()
        return int(status.split("Uid:")[1].split()[0])

    def healthy(self) -> bool:
        """Whether the image's own HEALTHCHECK passes, run once now."""
        return podman("healthcheck", "run", self.name, check=False).returncode == 0

    def stop(self, timeout: int = 30) -> int:
        """``podman stop`` (SIGTERM, then SIGKILL after ``timeout`` s); the exit code."""
        podman("stop", "--time", str(timeout), self.name, timeout=timeout + 30)
        return int(self.state()["ExitCode"])


def start(name: str, tag: str, port: int, memory_mb: int | None = None, **env: str) -> Container:
    """Run ``tag`` detached on the host's network, on ``port``, with a hard memory limit
    (no swap) of ``memory_mb`` if given."""
    podman("rm", "--force", "--time", "0", name, check=False)
    limits = ["--memory", f"{memory_mb}m", "--memory-swap", f"{memory_mb}m"] if memory_mb else []
    settings = [f"--env={key}={value}" for key, value in {"PORT": str(port), **env}.items()]
    started = time.perf_counter()
    podman("run", "--detach", "--name", name, "--network", "host", *limits, *settings, tag)
    return Container(name, f"http://127.0.0.1:{port}/", started)


def wait_until_ready(container: Container, timeout: float = START_UP_WAIT_S) -> None:
    """Poll ``/readyz`` until the model is warm; fail with the log if it exits or is late."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{container.url}readyz", timeout=2) as response:
                if response.status == 200:
                    container.ready_after = time.perf_counter() - container.started
                    return
        except OSError:
            if not container.state()["Running"]:
                raise PodmanError(f"{container.name} exited:\n{container.logs()}") from None
            time.sleep(0.05)
    raise PodmanError(f"{container.name} not ready within {timeout} s:\n{container.logs()}")


def remove(container: Container) -> None:
    podman("rm", "--force", "--time", "0", container.name, check=False)


@contextmanager
def running(
    name: str, tag: str, port: int, memory_mb: int | None = None, **env: str
) -> Iterator[Container]:
    """A ready container until the block ends; then it is removed, whatever happened."""
    container = start(name, tag, port, memory_mb, **env)
    try:
        wait_until_ready(container)
        yield container
    finally:
        remove(container)
