"""Time limits for emulated runs and stress runs, from the work they do rather than a flat 150 s.

qemu runs a photo through InceptionV3 in a known amount of CPU time; on a
machine whose cores are shared, the wall time is that times how many busy
processes share the core. So an emulated test body gets its CPU budget (a
start-up plus a cost per photo, each about twice what was measured) times
``CORE_SHARE`` as its pytest-timeout: a hang still fails, a busy core does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

CORE_SHARE = 4
"""Wall time allowed per CPU second: the core shared with three other busy processes."""
QUANTIZATION = 120
"""CPU seconds to calibrate and quantize InceptionV3 on 25 photos, about twice as measured."""


@dataclass(frozen=True)
class EmulationBudget:
    """CPU seconds one emulated InceptionV3 run may take."""

    start: float
    """The guest's Python, numpy and ONNX Runtime imports and the session's creation."""
    per_photo: float

    def cpu_seconds(self, photos: int, quantizes: bool = False) -> float:
        return self.start + self.per_photo * photos + QUANTIZATION * quantizes

    def timeout(self, photos: int, quantizes: bool = False) -> pytest.MarkDecorator:
        """The pytest-timeout mark for a test body that emulates ``photos`` photos once
        (and, with ``quantizes``, calibrates an InceptionV3 on 25 photos first)."""
        return pytest.mark.timeout(CORE_SHARE * self.cpu_seconds(photos, quantizes))


ARM64_FLOAT32 = EmulationBudget(start=60, per_photo=120)
"""qemu-aarch64, float32: measured 50 to 60 CPU seconds a photo (2026-12-01)."""
ARM64_INT8 = EmulationBudget(start=60, per_photo=15)
"""qemu-aarch64, int8: measured 3 to 7 CPU seconds a photo."""
X86_INT8 = EmulationBudget(start=30, per_photo=20)
"""qemu-x86_64 as Haswell or Nehalem, int8: measured about 8 CPU seconds a photo."""


LARGE_UPLOAD_CPU_S = 3.0
"""CPU seconds a ~40-megapixel upload takes, decoded and classified: measured 0.5 to 2 s
for the kinds of ``tests.support.images.LARGE`` on a 2-core AMD EPYC."""


def uploads_timeout(uploads: int) -> pytest.MarkDecorator:
    """The pytest-timeout mark for a test body that has the app classify ``uploads`` large
    uploads: a hang still fails, a busy machine does not."""
    return pytest.mark.timeout(60 + CORE_SHARE * LARGE_UPLOAD_CPU_S * uploads)


START_UP_WAIT_S = 240.0
"""How long a test waits for an app or a container to be ready: start-up takes 5 to 20 s
on a quiet machine (``benchmarks.startup``, ``benchmarks.oci_image`` measure it against
Heroku's 60 s), CORE_SHARE times more on a shared one."""
