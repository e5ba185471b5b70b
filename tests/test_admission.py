"""The memory budget and the batcher: what lets many callers share one small dyno."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from classifier.admission import BusyError, MemoryBudget
from classifier.batching import Batcher
from classifier.metadata import Preprocessing
from classifier.preprocess import ImageError, ImageTooLargeError, preprocess
from tests.support.harness import wait_for
from tests.support.images import write_truncated_jpeg

MB = 1 << 20


def hold(budget: MemoryBudget, amount: int, entered: threading.Event, leave: threading.Event):
    with budget.reserve(amount):
        entered.set()
        leave.wait(10)


def test_reservations_are_granted_in_arrival_order() -> None:
    budget = MemoryBudget(100, timeout=10)
    order: list[str] = []
    entered, leave = threading.Event(), threading.Event()
    holder = threading.Thread(target=hold, args=(budget, 60, entered, leave))
    holder.start()
    entered.wait(5)

    def reserve(name: str, amount: int) -> None:
        with budget.reserve(amount):
            order.append(name)

    # "big" comes first and does not fit while 60 are held; "small" would fit, but waits its turn.
    big = threading.Thread(target=reserve, args=("big", 90))
    big.start()
    wait_for(lambda: budget.waiting >= 1)
    small = threading.Thread(target=reserve, args=("small", 10))
    small.start()
    wait_for(lambda: budget.waiting >= 2)
    assert order == []
    leave.set()
    for thread in (holder, big, small):
        thread.join(5)
    assert order == ["big", "small"]
    assert budget.in_use == 0


def test_a_reservation_over_the_whole_budget_is_refused_at_once() -> None:
    budget = MemoryBudget(100 * MB, timeout=10)
    with (
        pytest.raises(ImageTooLargeError, match="more than this server can spare"),
        budget.reserve(101 * MB),
    ):
        pass
    assert budget.in_use == 0


def test_a_wait_past_the_timeout_is_busy_and_leaves_the_line() -> None:
    budget = MemoryBudget(100, timeout=0.1)
    entered, leave = threading.Event(), threading.Event()
    holder = threading.Thread(target=hold, args=(budget, 100, entered, leave))
    holder.start()
    entered.wait(5)
    with pytest.raises(BusyError, match="try again") as raised, budget.reserve(1):
        pass
    assert raised.value.retry_after >= 1
    assert budget.waiting == 0
    leave.set()
    holder.join(5)
    with budget.reserve(100):
        assert budget.in_use == 100


def test_a_decode_that_fails_halfway_gives_its_share_back(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.jpg"
    write_truncated_jpeg(truncated)
    budget = MemoryBudget(100 * MB, timeout=1)
    held: list[int] = []

    def admit(cost: int):
        held.append(cost)
        return budget.reserve(cost)

    with pytest.raises(ImageError, match="truncated or corrupt"):
        preprocess(truncated, Preprocessing(), admit=admit)
    assert held
    assert held[0] > 0
    assert budget.in_use == 0


def test_many_concurrent_callers_all_get_through() -> None:
    budget = MemoryBudget(100, timeout=30)
    rng = np.random.default_rng(0)
    amounts = rng.integers(1, 101, 400).tolist()
    peak = 0
    lock = threading.Lock()

    def work(amount: int) -> int:
        nonlocal peak
        with budget.reserve(amount):
            with lock:
                peak = max(peak, budget.in_use)
            time.sleep(0.0005)
        return amount

    with ThreadPoolExecutor(32) as pool:
        assert sum(pool.map(work, amounts)) == sum(amounts)
    assert peak <= 100
    assert budget.in_use == 0
    assert budget.waiting == 0


def test_idle_hook_runs_when_the_last_share_comes_back_with_the_peak_held() -> None:
    idle = []
    budget = MemoryBudget(100, timeout=1, on_idle=lambda peak: idle.append((budget.in_use, peak)))
    with budget.reserve(10), budget.reserve(20):
        pass
    with budget.reserve(5):
        pass
    assert idle == [(0, 30), (0, 5)]


def test_a_spare_share_is_held_only_if_free_now_and_nobody_waits() -> None:
    budget = MemoryBudget(100, timeout=10, slots=1)
    entered, leave = threading.Event(), threading.Event()
    with budget.reserve(60):
        with budget.reserve_if_free(40) as spared:  # no decode slot needed, no waiting
            assert spared
            assert budget.in_use == 100
        with budget.reserve_if_free(41) as spared:
            assert not spared
            assert budget.in_use == 60
        waiter = threading.Thread(target=hold, args=(budget, 10, entered, leave))
        waiter.start()
        wait_for(lambda: budget.waiting == 1)
        with budget.reserve_if_free(1) as spared:  # a decode waits in line: it comes first
            assert not spared
    leave.set()
    waiter.join()
    assert entered.is_set()
    assert budget.in_use == 0


def test_batcher_takes_only_the_waiting_rows_the_budget_spares() -> None:
    runs: list[int] = []
    asked: list[int] = []
    gate = threading.Event()

    def run(batch: np.ndarray, settle: bool) -> np.ndarray:
        runs.append(len(batch))
        gate.wait(5)
        return batch

    @contextmanager
    def spare(rows: int) -> Iterator[bool]:
        asked.append(rows)
        yield rows <= 1

    batcher = Batcher(run, max_batch=4, spare=spare)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher, np.zeros((1, 1)))
        wait_for(lambda: runs)
        rest = [pool.submit(batcher, np.zeros((1, 1))) for _ in range(5)]
        wait_for(lambda: len(batcher._queue) == 5)
        gate.set()
        first.result()
        assert all(len(future.result()) == 1 for future in rest)
    # Five waited: 3 rows to join the next one's run, then 2, refused; 1 spared: a pair.
    # Then three waited: 2 refused, 1 spared. The last ran alone, with nothing to spare.
    assert asked == [3, 2, 1, 2, 1]
    assert runs == [1, 2, 2, 1]


def test_batcher_runs_waiting_callers_together_and_answers_each() -> None:
    runs: list[int] = []
    settles: list[bool] = []
    gate = threading.Event()

    def run(batch: np.ndarray, settle: bool) -> np.ndarray:
        runs.append(len(batch))
        settles.append(settle)
        gate.wait(5)
        return batch * 2

    batcher = Batcher(run, max_batch=8)
    with ThreadPoolExecutor(10) as pool:
        first = pool.submit(batcher, np.array([[0.0]]))
        wait_for(lambda: runs)
        rest = [pool.submit(batcher, np.array([[float(i)]])) for i in range(1, 10)]
        time.sleep(0.05)  # all nine are waiting for the first run
        gate.set()
        assert first.result()[0, 0] == 0
        assert [future.result()[0, 0] for future in rest] == [2.0 * i for i in range(1, 10)]
    assert runs == [1, 8, 1]
    # The batch of 8 hands its memory back as it ends, though one caller still waits.
    assert settles == [False, True, False]
    batcher(np.array([[1.0]]))
    assert settles[-1] is False  # lone runs keep their memory


def test_a_burst_ending_in_a_batch_settles_with_it() -> None:
    settles: list[bool] = []
    batcher = Batcher(lambda batch, settle: settles.append(settle) or batch, max_batch=4)
    batcher(np.zeros((1, 1)))
    batcher(np.zeros((2, 1)))  # nobody waits after this pair: memory goes back at once
    assert settles == [False, True]


def test_batcher_gives_a_failed_run_to_every_caller_in_it() -> None:
    def run(batch: np.ndarray, settle: bool) -> np.ndarray:
        raise RuntimeError("model broke")

    batcher = Batcher(run, max_batch=4)
    with pytest.raises(RuntimeError, match="model broke"):
        batcher(np.zeros((1, 1)))
    with pytest.raises(RuntimeError, match="model broke"):  # and it is free again
        batcher(np.zeros((1, 1)))
