"""One model run at a time, taking every input that waits: batching without a timer.

A run already keeps the cores busy, so runs go one at a time. Requests
that arrive during a run wait for it, and the next run takes them all
together (up to ``max_batch``): a batch costs less per image than single
runs, and nobody waits for a batch to fill.

A batch's activations are memory beyond the idle app's (+23 MB for a float32
pair), so they draw on the memory budget as decodes do: a request joins a
run only if the budget ``spare``s its rows at once (nobody waiting in line),
and otherwise runs next, alone or with others. And since ONNX Runtime's arena
would keep a batch's activations once run, for as long as the burst lasts,
a batch is told to ``settle``, to hand them back as it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

Spare = Callable[[int], AbstractContextManager[bool]]
"""``spare(rows)``: a block holding memory for ``rows`` more rows in a run, if it can be
had at once; it yields whether it is held."""


def always_spared(rows: int) -> AbstractContextManager[bool]:
    """For a batcher whose runs' memory nobody counts."""
    return nullcontext(True)


@dataclass
class _Request:
    inputs: np.ndarray
    outputs: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


class Batcher:
    """Calls ``run(inputs, settle)`` on every waiting caller's inputs, up to ``max_batch`` rows.

    The first waiting caller's rows always run; the others' join them as far as
    ``spare`` allows. ``settle`` is true for a run of more than one row: the memory
    it grew goes back (and the next run takes ~10 ms longer, as it grows the arena
    again).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray, bool], np.ndarray],
        max_batch: int,
        spare: Spare = always_spared,
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self._spare = spare
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
                waiting = self._take()
            self._run_batch(waiting)
        if request.error is not None:
            raise request.error
        assert request.outputs is not None
        return request.outputs

    def _take(self) -> list[_Request]:
        """The first waiting requests whose rows fit in one batch (at least one)."""
        taken, rows = 0, 0
        for request in self._queue:
            if taken and rows + len(request.inputs) > self.max_batch:
                break
            taken, rows = taken + 1, rows + len(request.inputs)
        batch, self._queue = self._queue[:taken], self._queue[taken:]
        return batch

    @contextmanager
    def _spared(self, waiting: list[_Request]) -> Iterator[list[_Request]]:
        """The first of ``waiting`` and as many after it as ``spare`` holds memory for, while
        they run; the others go back to the head of the queue, for the next run."""
        for joining in range(len(waiting) - 1, 0, -1):
            with self._spare(
                sum(len(request.inputs) for request in waiting[1 : joining + 1])
            ) as held:
                if held:
                    self._put_back(waiting[joining + 1 :])
                    yield waiting[: joining + 1]
                    return
        self._put_back(waiting[1:])
        yield waiting[:1]

    def _put_back(self, requests: list[_Request]) -> None:
        with self._changed:
            self._queue[:0] = requests

    def _run_batch(self, waiting: list[_Request]) -> None:
        batch = waiting  # until ``_spared`` says which of them run
        try:
            with self._spared(waiting) as batch:
                inputs = [request.inputs for request in batch]
                rows = sum(len(part) for part in inputs)
                outputs = self._run(
                    inputs[0] if len(inputs) == 1 else np.concatenate(inputs), rows > 1
                )
            offsets = np.cumsum([len(request.inputs) for request in batch])[:-1]
            for request, answer in zip(batch, np.split(outputs, offsets), strict=True):
                request.outputs = answer
        except BaseException as error:  # every caller in the run gets its failure
            for request in batch:
                request.error = error
        finally:
            with self._changed:
                for request in batch:
                    request.done = True
                self._busy = False
                self._changed.notify_all()
