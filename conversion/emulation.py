"""Run an ONNX model as another x86-64 CPU would, under Debian's ``qemu-x86_64``.

ONNX Runtime chooses its int8 kernels by the CPU's instruction sets, so an
int8 model verified on this machine may answer differently on a dyno's CPU.
``qemu-x86_64 -cpu Haswell`` runs this same Python and onnxruntime as an
AVX2 CPU without AVX-512 or VNNI (the kernel that saturates), and
``-cpu Nehalem`` as an SSE4.2 CPU. Emulation is ~300 times slower than
native, so only a few photos are run this way, and its timings mean nothing.
The emulated process is ``conversion/emulated_run.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier.cpu import CpuFeatures
from classifier.errors import ClassifierError

QEMU = "qemu-x86_64"
WORKER = Path(__file__).with_name("emulated_run.py")
INSTALL_HINT = "install Debian's qemu-user (`apt-get install qemu-user`)"


class EmulationError(ClassifierError):
    """The emulated run could not be made; the message says why."""

    exit_code = 1


@dataclass(frozen=True)
class EmulatedCpu:
    """A qemu CPU model and the int8-relevant instruction sets it offers."""

    qemu_cpu: str
    instruction_sets: tuple[str, ...]

    @property
    def features(self) -> CpuFeatures:
        return CpuFeatures.of("x86_64", self.instruction_sets)

    @property
    def command(self) -> str:
        return f"{QEMU} -cpu {self.qemu_cpu}"


HASWELL = EmulatedCpu("Haswell", ("sse4_2", "avx", "avx2", "fma"))
NEHALEM = EmulatedCpu("Nehalem", ("sse4_2",))
EMULATED_CPUS = {cpu.qemu_cpu: cpu for cpu in (HASWELL, NEHALEM)}


def qemu_available() -> bool:
    return shutil.which(QEMU) is not None


def emulated_probabilities(model: Path | bytes, inputs: np.ndarray, cpu: EmulatedCpu) -> np.ndarray:
    """``model``'s outputs for ``inputs`` (one run per row), computed as ``cpu`` would."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise EmulationError(f"{QEMU} is not installed: {INSTALL_HINT}.")
    with tempfile.TemporaryDirectory(prefix="emulated-") as work:
        inputs_path, output_path = Path(work) / "inputs.npy", Path(work) / "outputs.npy"
        np.save(inputs_path, inputs)
        if isinstance(model, bytes):
            (Path(work) / "model.onnx").write_bytes(model)
            model = Path(work) / "model.onnx"
        command = [qemu, "-cpu", cpu.qemu_cpu, sys.executable, str(WORKER)]
        command += [str(model), str(inputs_path), str(output_path)]
        # qemu warns on stderr about every CPUID bit it cannot emulate; shown on failure only.
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            errors = [
                line for line in result.stderr.splitlines() if "TCG doesn't support" not in line
            ]
            raise EmulationError(
                f"{cpu.command} could not run {model.name} (exit {result.returncode}): "
                + " | ".join(errors[-5:])
            )
        return np.load(output_path)
