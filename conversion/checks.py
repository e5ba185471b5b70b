"""What every comparison the converter makes answers: passed or not, and one line why.

``verify.ParityReport`` and ``verify.HeatmapReport`` (ONNX against Keras) and
``quantize.AgreementReport``, ``CpuCheck`` and ``Int8Verification`` (int8
against float32) each say it in their own words; the pipeline prints the
line and refuses on a failure through this one protocol.
"""

from __future__ import annotations

from typing import Protocol


class Check(Protocol):
    @property
    def passed(self) -> bool: ...

    def summary(self) -> str:
        """One line: the verdict and the figures it rests on."""
        ...


def verdict(passed: bool) -> str:
    """The word a summary starts its verdict with."""
    return "PASSED" if passed else "FAILED"
