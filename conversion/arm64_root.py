"""Prepare the ARM64 emulation root: an arm64 Python 3.11 and the runtime's aarch64 wheels.

``conversion.emulation`` runs the app's model under ``qemu-aarch64`` with it
(``make arm64-root``; root and network needed, about a minute and 350 MB):

- ``base/``: Debian's arm64 packages of Python 3.11 and the C libraries it
  and the wheels link against, fetched with ``apt-get download`` (after
  ``dpkg --add-architecture arm64``) and unpacked with ``dpkg -x``, 9 MB of
  packages;
- ``site/``: ``requirements.txt`` installed for ``manylinux_2_28_aarch64``
  with its hashes required, by uv (pip's ``--platform`` takes wheels only,
  and pyvips ships an sdist).

    python -m conversion.arm64_root [ROOT]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from classifier.assets import ROOT
from conversion.emulation import ARM64_PYTHON, NEOVERSE_N1, EmulationError, arm64_root, run

DEBIAN_PACKAGES = (
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "libgcc-s1",
    "libstdc++6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libssl3",
    "libbz2-1.0",
    "liblzma5",
    "libuuid1",
    "libcrypt1",
)
"""Python 3.11 and what it and the wheels link against (the rest they bundle)."""
WHEEL_PLATFORM = "aarch64-manylinux_2_28"
STAMP = ".requirements-sha256"


class PrepareError(Exception):
    """The root could not be prepared; the message says what to do."""


def sh(*command: str | Path, cwd: Path | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shown = " ".join(map(str, command))
        raise PrepareError(f"`{shown}` failed (exit {result.returncode}): {result.stderr.strip()}")


def requirements_digest(requirements: Path) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()


def is_ready(root: Path, requirements: Path) -> bool:
    """Whether ``root`` holds Python and wheels for these very requirements."""
    stamp = root / STAMP
    return (
        (root / "base" / ARM64_PYTHON).is_file()
        and stamp.is_file()
        and stamp.read_text().strip() == requirements_digest(requirements)
    )


def debian_packages(base: Path) -> None:
    """Debian's arm64 Python 3.11, unpacked into ``base``."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise PrepareError("apt-get and dpkg are needed: this works on Debian and Ubuntu.")
    foreign = subprocess.run(
        ["dpkg", "--print-foreign-architectures"], capture_output=True, text=True, check=True
    ).stdout.split()
    if "arm64" not in foreign:
        if os.geteuid() != 0:
            raise PrepareError(
                "arm64 is not a dpkg architecture here: run "
                "`sudo dpkg --add-architecture arm64 && sudo apt-get update` first."
            )
        print("adding arm64 to dpkg's architectures, updating apt's lists ...", flush=True)
        sh("dpkg", "--add-architecture", "arm64")
        sh("apt-get", "update", "-qq")
    with tempfile.TemporaryDirectory(prefix="arm64-debs-") as folder:
        print(f"downloading {len(DEBIAN_PACKAGES)} arm64 packages ...", flush=True)
        sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
        sh(
            "apt-get",
            "download",
            "-qq",
            *sandbox,
            *(f"{name}:arm64" for name in DEBIAN_PACKAGES),
            cwd=Path(folder),
        )
        for deb in sorted(Path(folder).glob("*.deb")):
            sh("dpkg", "-x", deb, base)


def wheels(site: Path, requirements: Path) -> None:
    """The runtime's aarch64 wheels, as locked, installed into ``site``."""
    print(f"installing {requirements.name} for {WHEEL_PLATFORM} ...", flush=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sh(
        sys.executable,
        "-m",
        "uv",
        "pip",
        "install",
        "--quiet",
        "--require-hashes",
        "--target",
        site,
        "--python-platform",
        WHEEL_PLATFORM,
        "--python-version",
        version,
        "-r",
        requirements,
    )


def prepare(root: Path, requirements: Path = ROOT / "requirements.txt") -> None:
    """Make ``root`` afresh beside it, check it runs, then put it in place."""
    if is_ready(root, requirements):
        print(f"{root} is ready for {requirements.name}")
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        debian_packages(staging / "base")
        wheels(staging / "site", requirements)
        (staging / STAMP).write_text(requirements_digest(requirements) + "\n")
        print(f"checking it: onnxruntime as {NEOVERSE_N1.command} ...", flush=True)
        os.environ["ARM64_ROOT"] = str(staging)
        try:
            guest = smoke_test()
        except EmulationError as error:
            raise PrepareError(f"the new root does not run: {error}") from error
        finally:
            del os.environ["ARM64_ROOT"]
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{root} is ready: the guest sees itself as {guest}")


def smoke_test() -> str:
    """Run a one-node model (Relu) as Graviton2 in the staged root: the CPU class it saw."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    shape = [1, 4]
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "smoke",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    emulated = run(NEOVERSE_N1, model.SerializeToString(), np.array([[-1, 0, 1, 2]], np.float32))
    if not np.array_equal(emulated.probabilities, [[0, 0, 1, 2]]):
        raise PrepareError(f"onnxruntime as {NEOVERSE_N1.command} computed a wrong Relu.")
    return emulated.guest_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, nargs="?", default=arm64_root())
    args = parser.parse_args()
    try:
        prepare(args.root)
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
