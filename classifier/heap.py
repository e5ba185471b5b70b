"""The process's memory: what work costs, and handing back what the C heap holds but no
longer uses."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

from classifier.options import MB

log = logging.getLogger(__name__)


def peak_growth(work: Callable[[], object]) -> int | None:
    """How far this process's resident memory rose while ``work`` ran, from the kernel's
    high-water mark (reset first); ``None`` where the kernel does not keep one (macOS)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # the high-water mark back to what is resident now
        before = _status_bytes("VmRSS")
    except OSError:
        work()
        return None
    work()
    return max(0, _status_bytes("VmHWM") - before)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(f"{field}:"))
    return int(line.split()[1]) * 1024


def release_freed_memory() -> None:
    """Hand memory that is free but still held by the C heap back to the OS.

    Loading a session parses the model and then lays its weights out afresh,
    so about one model's worth of memory is freed at the end, and a large
    decode frees its buffers at once; glibc keeps such memory unless asked,
    and a 512 MB dyno cannot spare it.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        log.debug("malloc_trim is not available here (not glibc)")


TRIM_AFTER = 32 * MB
"""Decodes that held this much leave pages worth handing back; after small ones,
handing them back costs more (the next decode faults them in again: ~2.5 ms
for a 451 x 300 PNG) than it saves."""


def release_after_large_decodes(peak: int) -> None:
    """The memory budget's idle hook: trim the heap once large decodes are done."""
    if peak >= TRIM_AFTER:
        release_freed_memory()
