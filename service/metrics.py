"""Prometheus metrics, shared by the page and the REST API.

Both count their classifications through ``observed``; the decode and
inference histograms are filled by ``Classifier`` itself, through the
``PrometheusObserver`` the app gives it, so every caller's work shows up the
same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import Counter, Gauge, Histogram

from classifier.errors import ClassifierError
from classifier.observer import Observer
from service.server import CLASSIFYING

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30)

REQUESTS = Counter(
    "classifier_requests",
    "Classification requests by route, outcome and caller",
    ["route", "outcome", "caller"],
)
CALLER: ContextVar[str | None] = ContextVar("caller", default=None)
"""The name of the key or user a private app let the request in as (``service.access``);
None when the app is public, and in the page's events, which run outside their request."""
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


IN_FLIGHT.set_function(lambda: CLASSIFYING.count)


class PrometheusObserver(Observer):
    """The classifier's decodes and model runs, as histograms."""

    def decoded(self, seconds: float) -> None:
        DECODE_SECONDS.observe(seconds)

    def inferred(self, seconds: float) -> None:
        INFERENCE_SECONDS.observe(seconds)

    def context(self) -> str:
        from service.request_id import current  # request_id counts its errors here

        return current.get()


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
        REQUESTS.labels(route, outcome, CALLER.get() or "-").inc()
