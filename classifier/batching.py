"""One model run at a time, taking every input that waits: batching without a timer.

A run already keeps the cores busy, so runs go one at a time. Requests
that arrive during a run wait for it, and the next run takes them all
together (up to ``max_batch``): a batch costs less per image than single
runs, and nobody waits for a batch to fill. A batch's activations would stay
in ONNX Runtime's arena once run (+16 MB for a float32 pair), outside the
memory budget, for as long as the burst lasts; so a batch is told to
``settle``, to hand them back as it ends, and a burst never holds them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class _Request:
    inputs: np.ndarray
    outputs: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


class Batcher:
    """Calls ``run(inputs, settle)`` on every waiting caller's inputs, up to ``max_batch`` rows.

    ``settle`` is true for a run of more than one row: the memory it grew goes back
    (and the next run takes ~10 ms longer, as it grows the arena again).
    """

    def __init__(self, run: Callable[[np.ndarray, bool], np.ndarray], max_batch: int) -> None:
        self._run = run
        self._max_batch = max_batch
        self._queue: list[_Request] = []
        self._busy = False
        self._changed = threading.Condition()

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        request = _Request(inputs)
        with self._changed:
            self._queue.append(request)
        while True:
            with self._changed:
                self._changed.wait_for(lambda: request.done or not self._busy)
                if request.done:
                    break
                self._busy = True
                batch = self._take()
            self._run_batch(batch, settle=sum(len(taken.inputs) for taken in batch) > 1)
        if request.error is not None:
            raise request.error
        assert request.outputs is not None
        return request.outputs

    def _take(self) -> list[_Request]:
        """The first waiting requests whose rows fit in one batch (at least one)."""
        taken, rows = 0, 0
        for request in self._queue:
            if taken and rows + len(request.inputs) > self._max_batch:
                break
            taken, rows = taken + 1, rows + len(request.inputs)
        batch, self._queue = self._queue[:taken], self._queue[taken:]
        return batch

    def _run_batch(self, batch: list[_Request], settle: bool) -> None:
        try:
            inputs = [request.inputs for request in batch]
            outputs = self._run(inputs[0] if len(inputs) == 1 else np.concatenate(inputs), settle)
            offsets = np.cumsum([len(request.inputs) for request in batch])[:-1]
            for request, rows in zip(batch, np.split(outputs, offsets), strict=True):
                request.outputs = rows
        except BaseException as error:  # every waiting caller gets the run's failure
            for request in batch:
                request.error = error
        finally:
            with self._changed:
                for request in batch:
                    request.done = True
                self._busy = False
                self._changed.notify_all()
