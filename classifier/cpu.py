"""Which CPU class this process runs on, as far as int8 answers are concerned.

ONNX Runtime picks its int8 matrix kernels by the CPU's instruction sets,
and they do not all compute alike: on x86 CPUs with AVX2 or AVX-512 but
without VNNI, uint8 x int8 products are summed in pairs into 16 bits
(``vpmaddubsw``), which saturates unless the weights use 7 bits. On ARM64
(Graviton, Apple Silicon) it uses I8MM (``smmla``) where there is I8MM,
else the dot product (``sdot``/``udot``), else plain NEON widening
multiplies. So an int8 model is only known to answer as verified on the
CPU classes its metadata lists. Standard library only: the runtime imports this.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from classifier.metadata import Verification

log = logging.getLogger(__name__)

X86_VNNI = "x86-64 with VNNI"
X86_AVX512 = "x86-64 AVX-512 without VNNI"
X86_AVX2 = "x86-64 AVX2 without AVX-512 or VNNI"
X86_SSE = "x86-64 without AVX2"
ARM64_I8MM = "ARM64 with I8MM"
ARM64 = "ARM64 with dot product, without I8MM"
ARM64_NEON = "ARM64 without dot product"
OTHER = "other"

REPORTED_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
)
"""The /proc/cpuinfo flags that steer ONNX Runtime's int8 kernels (x86 and ARM)."""


@dataclass(frozen=True)
class CpuFeatures:
    """A CPU's architecture and the instruction-set flags that matter for int8."""

    machine: str
    flags: frozenset[str]

    @classmethod
    def detect(cls, cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuFeatures:
        """This machine's, read from ``/proc/cpuinfo`` (macOS: ``sysctl``; no flags
        where neither answers)."""
        if sys.platform == "darwin":
            return cls(platform.machine().lower(), frozenset(_darwin_flags()))
        try:
            text = cpuinfo.read_text()
        except OSError:
            text = ""
        return cls(platform.machine().lower(), frozenset(_cpuinfo_flags(text)))

    @classmethod
    def of(cls, machine: str, flags: Iterable[str]) -> CpuFeatures:
        return cls(machine, frozenset(flags))

    @property
    def cpu_class(self) -> str:
        """The class that decides which int8 kernel ONNX Runtime runs."""
        if self.machine in {"aarch64", "arm64"}:
            if "i8mm" in self.flags:
                return ARM64_I8MM
            return ARM64 if "asimddp" in self.flags else ARM64_NEON
        if self.machine not in {"x86_64", "amd64"}:
            return OTHER
        if self.flags & {"avx512_vnni", "avx_vnni"}:
            return X86_VNNI
        if "avx512bw" in self.flags:
            return X86_AVX512
        if "avx2" in self.flags:
            return X86_AVX2
        return X86_SSE

    @property
    def instruction_sets(self) -> list[str]:
        """The reported flags this CPU has, in a fixed order."""
        return [flag for flag in REPORTED_FLAGS if flag in self.flags]

    def describe(self) -> str:
        return f"{self.cpu_class} ({self.machine}: {' '.join(self.instruction_sets) or 'no flags'})"


def _cpuinfo_flags(text: str) -> set[str]:
    """The first ``flags`` (x86) or ``Features`` (ARM) line's words."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"flags", "Features"}:
            return set(value.split())
    return set()


DARWIN_FEATURES = {
    "hw.optional.AdvSIMD": "asimd",
    "hw.optional.arm.FEAT_DotProd": "asimddp",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
}
"""macOS has no /proc/cpuinfo: its sysctl names for the ARM features that matter."""


def _darwin_flags() -> set[str]:
    """The ARM features macOS reports as present (``sysctl`` prints 1)."""
    try:
        output = subprocess.run(
            ["sysctl", *DARWIN_FEATURES], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return set()
    values = dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)
    return {flag for name, flag in DARWIN_FEATURES.items() if values.get(name, "").strip() == "1"}


def verified_cpu_classes(verification: Verification) -> set[str]:
    """The CPU classes an int8 model's metadata says it passed its agreement check on."""
    return {entry["cpu_class"] for entry in verification.get("cpus", []) if entry["passed"]}


def log_cpu_support(precision: str, verification: Verification) -> None:
    """Log this CPU's int8-relevant features, and warn when an int8 model was
    not verified on its class: its answers may then differ from float32's."""
    features = CpuFeatures.detect()
    log.info("CPU: %s", features.describe())
    if precision != "int8":
        return
    verified = verified_cpu_classes(verification)
    if features.cpu_class not in verified:
        log.warning(
            "This int8 model was not verified on this CPU class (%s); its metadata "
            "lists %s, so its answers here may differ from float32's. Convert it with "
            "the portable scheme where qemu-user is installed (and, for ARM64, the "
            "emulation root made by `make arm64-root`), or serve the float32 model.",
            features.cpu_class,
            ", ".join(sorted(verified)) or "none",
        )
