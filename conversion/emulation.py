"""Run an ONNX model as another CPU would, under Debian's ``qemu-user``.

ONNX Runtime chooses its int8 kernels by the CPU's instruction sets, so an
int8 model verified on this machine may answer differently on a dyno's CPU.
``qemu-x86_64 -cpu Haswell`` runs this same Python and onnxruntime as an
AVX2 CPU without AVX-512 or VNNI (the kernel that saturates), and
``-cpu Nehalem`` as an SSE4.2 CPU.

``qemu-aarch64 -cpu neoverse-n1`` (AWS Graviton2, Heroku Fir's dynos) and
``-cpu cortex-a76`` run an arm64 Python from Debian's packages with the
runtime's aarch64 wheels from ``requirements.txt``: the emulation root that
``make arm64-root`` prepares (``conversion/arm64_root.py``). qemu-user shows
the guest the host's x86 ``/proc/cpuinfo``, on which ONNX Runtime's CPU
detection crashes, so each run gets a made-up Arm one under its ``-L`` root.

Emulation is ~300 times slower than native, so only a few photos are run
this way, and its timings mean nothing. The emulated process is
``conversion/emulated_run.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier.assets import ROOT
from classifier.cpu import CpuFeatures
from conversion.errors import EmulationError

WORKER = Path(__file__).with_name("emulated_run.py")
INSTALL_HINT = "install Debian's qemu-user (`apt-get install qemu-user`)"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
ARM64_ROOT = CACHE / "slim-inception" / "arm64"
"""Where ``make arm64-root`` puts the arm64 Python and wheels (``$ARM64_ROOT`` overrides):
outside the project, 460 MB that no deployment needs. Inside it (``.emulation/``), the
hostile burst's server measured 301 MiB in pytest runs against 278 without (2026-12-08;
why is not known), and CI's memory bars failed."""
ARM64_PYTHON = "usr/bin/python3.11"
ARM64_HINT = "prepare it with `make arm64-root`"


@dataclass(frozen=True)
class EmulatedCpu:
    """A qemu CPU model and the int8-relevant instruction sets it offers."""

    qemu_cpu: str
    instruction_sets: tuple[str, ...]
    machine: str = "x86_64"
    arm_part: str = ""
    """ARM only: the MIDR part number its made-up /proc/cpuinfo names."""
    description: str = ""

    @property
    def qemu(self) -> str:
        return f"qemu-{self.machine}"

    @property
    def features(self) -> CpuFeatures:
        return CpuFeatures.of(self.machine, self.instruction_sets)

    @property
    def command(self) -> str:
        return f"{self.qemu} -cpu {self.qemu_cpu}"

    def cpuinfo(self) -> str:
        """The /proc/cpuinfo an ARM guest reads (Arm Ltd is implementer 0x41)."""
        features = " ".join(("fp", *self.instruction_sets, "cpuid"))
        return "".join(
            f"processor\t: {core}\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
            f"CPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: {self.arm_part}\n"
            "CPU revision\t: 1\n\n"
            for core in range(2)
        )


HASWELL = EmulatedCpu(
    "Haswell", ("sse4_2", "avx", "avx2", "fma"), description="an AVX2 CPU without VNNI"
)
NEHALEM = EmulatedCpu("Nehalem", ("sse4_2",), description="an SSE4.2 CPU")
NEOVERSE_N1 = EmulatedCpu(
    "neoverse-n1", ("asimd", "asimddp"), "aarch64", "0xd0c", "an ARM64 CPU (Graviton2)"
)
CORTEX_A76 = EmulatedCpu("cortex-a76", ("asimd", "asimddp"), "aarch64", "0xd0b", "a Cortex-A76")
PORTABLE_CHECKS = (HASWELL, NEOVERSE_N1)
"""The CPUs the converter checks a portable int8 model on, where it can."""


def arm64_root() -> Path:
    return Path(os.environ.get("ARM64_ROOT") or ARM64_ROOT)


def qemu_available(cpu: EmulatedCpu = HASWELL) -> bool:
    return shutil.which(cpu.qemu) is not None


def unavailable(cpu: EmulatedCpu) -> str | None:
    """Why ``cpu`` cannot be emulated here, or None when it can."""
    if not qemu_available(cpu):
        return f"{cpu.command} is missing; {INSTALL_HINT}"
    if cpu.machine == "aarch64" and not (arm64_root() / "base" / ARM64_PYTHON).is_file():
        return f"the ARM64 emulation root {arm64_root()} is missing; {ARM64_HINT}"
    return None


def guest_command(cpu: EmulatedCpu, work: Path) -> list[str]:
    """The command that starts Python as ``cpu``; ARM gets a root in ``work``."""
    reason = unavailable(cpu)
    if reason is not None:
        raise EmulationError(f"cannot run as {cpu.command}: {reason}.")
    qemu = shutil.which(cpu.qemu) or cpu.qemu
    if cpu.machine == "x86_64":
        return [qemu, "-cpu", cpu.qemu_cpu, sys.executable]
    root = arm64_root()
    # The root's own folders, and a /proc/cpuinfo that names this CPU.
    sysroot = work / "sysroot"
    (sysroot / "proc").mkdir(parents=True)
    for entry in (root / "base").iterdir():
        (sysroot / entry.name).symlink_to(entry.resolve())
    (sysroot / "proc" / "cpuinfo").write_text(cpu.cpuinfo())
    python_path = f"{(root / 'site').resolve()}{os.pathsep}{ROOT}"
    environment = ["-E", f"PYTHONPATH={python_path}", "-E", "PYTHONNOUSERSITE=1"]
    return [
        qemu,
        "-cpu",
        cpu.qemu_cpu,
        "-L",
        str(sysroot),
        *environment,
        str(sysroot / ARM64_PYTHON),
        "-s",
    ]


@dataclass(frozen=True)
class EmulatedRun:
    """What the emulated process computed, and the CPU class it saw itself as."""

    probabilities: np.ndarray
    inputs: np.ndarray | None
    """The model inputs it made from photos (``photos`` runs only)."""
    guest_cpu: str


def run(
    cpu: EmulatedCpu,
    model: Path | bytes,
    inputs: np.ndarray | None = None,
    photos: list[Path] | None = None,
    classifier: bool = False,
) -> EmulatedRun:
    """Run ``model`` as ``cpu`` on ``inputs`` (one run per row) or on ``photos``
    (decoded as ``cpu``); with ``classifier``, through the app's ``Classifier``."""
    with tempfile.TemporaryDirectory(prefix="emulated-") as folder:
        work = Path(folder)
        if isinstance(model, bytes):
            (work / "model.onnx").write_bytes(model)
            model = work / "model.onnx"
        command = [*guest_command(cpu, work), str(WORKER), str(model), str(work / "out.npz")]
        if inputs is not None:
            np.save(work / "inputs.npy", inputs)
            command += ["--arrays", str(work / "inputs.npy")]
        if photos:
            command += ["--photos", *map(str, photos)]
        if classifier:
            command.append("--classifier")
        # qemu warns on stderr about every CPUID bit it cannot emulate; shown on failure only.
        # The worker imports the project's classifier package (ARM's path is set by -E).
        environment = {**os.environ, "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, env=environment
        )
        if result.returncode != 0:
            errors = [
                line for line in result.stderr.splitlines() if "TCG doesn't support" not in line
            ]
            raise EmulationError(
                f"{cpu.command} could not run {model.name} (exit {result.returncode}): "
                + " | ".join(errors[-5:])
            )
        with np.load(work / "out.npz") as out:
            return EmulatedRun(
                out["probabilities"],
                out.get("inputs"),
                str(out["guest_cpu"]),
            )


def emulated_probabilities(model: Path | bytes, inputs: np.ndarray, cpu: EmulatedCpu) -> np.ndarray:
    """``model``'s outputs for ``inputs`` (one run per row), computed as ``cpu`` would."""
    return run(cpu, model, inputs).probabilities
