"""Admission by memory: one process-wide budget that every decode draws on.

A 512 MB dyno cannot hold eight full-size decodes at once, however small the
files that carry them. Each decode asks for what its header says it will
cost; it waits in line, first come first served, until that much is free,
and gives it back when it ends, however it ends.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from classifier.errors import ClassifierError
from classifier.options import MB
from classifier.preprocess import ImageTooLargeError


class BusyError(ClassifierError):
    """The server is saturated; the client should try again after ``retry_after`` s."""

    status = 503
    outcome = "busy"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class MemoryBudget:
    """A weighted semaphore over bytes, granted in arrival order (no starvation).

    At most ``slots`` reservations are held at once: decodes are CPU-bound,
    so more than one per core gains nothing, and each one in flight costs
    memory of its own (its thread's buffers) beyond its estimate.
    ``on_idle(peak)`` runs whenever the last reservation is given back, with
    the most that was held since the budget was last idle: the moment to hand
    large decodes' freed memory back to the system.
    """

    def __init__(
        self,
        capacity: int,
        timeout: float,
        slots: int = 2,
        on_idle: Callable[[int], None] = lambda peak: None,
    ) -> None:
        self.capacity = capacity
        self.timeout = timeout
        self.slots = slots
        self._on_idle = on_idle
        self._in_use = 0
        self._peak = 0
        self._holders = 0
        self._queue: deque[object] = deque()
        self._changed = threading.Condition()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @contextmanager
    def reserve(self, amount: int) -> Iterator[None]:
        """Hold ``amount`` bytes for the block, after those who came first.

        Raises ``ImageTooLargeError`` when ``amount`` alone exceeds the budget,
        and ``BusyError`` when it is not free within the timeout.
        """
        if amount > self.capacity:
            raise ImageTooLargeError(
                f"This image would take about {amount / MB:.0f} MB to decode, more than "
                f"this server can spare ({self.capacity / MB:.0f} MB). Please upload a "
                "smaller image, or save it as a baseline JPEG."
            )
        self._acquire(amount)
        try:
            yield
        finally:
            with self._changed:
                self._in_use -= amount
                self._holders -= 1
                peak = self._peak if self._holders == 0 else 0
                if peak:
                    self._peak = 0
                self._changed.notify_all()
            if peak:
                self._on_idle(peak)

    @contextmanager
    def reserve_if_free(self, amount: int) -> Iterator[bool]:
        """Hold ``amount`` bytes for the block if they are free now and nobody waits in line;
        yields whether they are held. For work that can as well be done later (a second
        image in a model run): it never waits, never takes a decode's turn or slot."""
        with self._changed:
            held = not self._queue and self._in_use + amount <= self.capacity
            if held:
                self._in_use += amount
                self._peak = max(self._peak, self._in_use)
        try:
            yield held
        finally:
            if held:
                with self._changed:
                    self._in_use -= amount
                    self._changed.notify_all()

    def _acquire(self, amount: int) -> None:
        ticket = object()
        deadline = time.monotonic() + self.timeout
        with self._changed:
            self._queue.append(ticket)
            try:
                while (
                    self._queue[0] is not ticket
                    or self._in_use + amount > self.capacity
                    or self._holders >= self.slots
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise BusyError(
                            "The server is busy with other images; please try again in a "
                            "few seconds.",
                            retry_after=max(1, round(self.timeout / 4)),
                        )
                    self._changed.wait(remaining)
                self._in_use += amount
                self._peak = max(self._peak, self._in_use)
                self._holders += 1
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()
