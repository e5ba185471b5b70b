"""Prometheus metrics, shared by the page and the REST API.

Both count their classifications through ``observed``; the decode and
inference histograms are filled by ``Classifier`` itself, so every caller's
work shows up the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

from classifier.errors import ClassifierError

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30)

REQUESTS = Counter(
    "classifier_requests", "Classification requests by route and outcome", ["route", "outcome"]
)
REQUEST_SECONDS = Histogram(
    "classifier_request_seconds",
    "Time to classify one request, admission wait included",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
DECODE_SECONDS = Histogram(
    "classifier_decode_seconds",
    "Time to decode and preprocess one image, its wait for memory included",
    buckets=LATENCY_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "classifier_inference_seconds",
    "Time of one model run, its wait for an inference slot included",
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("classifier_requests_in_flight", "Classifications under way")
WAITING = Gauge("classifier_requests_waiting", "Decodes waiting for the memory budget")
BUDGET_IN_USE = Gauge("classifier_memory_budget_in_use_bytes", "Memory budget held by decodes")
BUDGET_CAPACITY = Gauge("classifier_memory_budget_bytes", "The memory budget for decodes")
MODEL_INFO = Gauge("classifier_model_info", "The model served", ["name", "precision", "sha256"])
UNEXPECTED_ERRORS = Counter(
    "classifier_unexpected_errors", "Requests answered 500: a bug, logged with its traceback"
)


class InFlight:
    """How many classifications are under way, and a wait for there to be none."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = threading.Condition()

    def __enter__(self) -> None:
        with self._changed:
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self.count -= 1
            self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is in flight; False if ``timeout`` s pass first."""
        with self._changed:
            return self._changed.wait_for(lambda: self.count == 0, timeout)


CLASSIFYING = InFlight()
IN_FLIGHT.set_function(lambda: CLASSIFYING.count)


@contextmanager
def observed(route: str) -> Iterator[None]:
    """Count one classification under ``route``: its outcome, its time, while in flight."""
    start = time.perf_counter()
    outcome = "ok"
    try:
        with CLASSIFYING:
            yield
    except Exception as error:
        outcome = error.outcome if isinstance(error, ClassifierError) else "error"
        raise
    finally:
        REQUEST_SECONDS.labels(route).observe(time.perf_counter() - start)
        REQUESTS.labels(route, outcome).inc()
