"""What every benchmark shares: options, tables, the app as a process, its memory.

Each script in this folder is run from the repository root as
``.venv/bin/python -m benchmarks.NAME``, so ``classifier``, ``conversion`` and
``tests.support`` import as they are. It never imports TensorFlow or
onnxruntime itself: the scripts decide what enters their process.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import statistics
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# gradio_client sends telemetry unless this says otherwise (its own flag is not enough).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from classifier import assets
from classifier.assets import ROOT
from tests.support import harness
from tests.support.harness import Instance

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_MODEL = assets.DEFAULT_MODEL_PATH
HEROKU_MEMORY_MB = 512
APPS = {"ours": "app.py", "keras": "-m benchmarks.keras_app"}
"""The two pages compared, as the Procfile's command runs them: ours, and the same
page on Keras (``keras_app.py``)."""
READY_PATHS = {"app.py": "readyz", "-m benchmarks.keras_app": ""}
"""Where each page says it is ready: ours after warm-up, Keras' page once it serves."""
MB = 1e6


# --- options and reports ---------------------------------------------------


def options(description: str) -> argparse.ArgumentParser:
    """The options every script takes: ``--model`` (repeatable) and ``--json``."""
    arguments = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    arguments.add_argument(
        "--model",
        type=Path,
        action="append",
        help=f"an ONNX model with its .json beside it; repeat for a row per model "
        f"(default: {DEFAULT_MODEL.relative_to(ROOT)})",
    )
    arguments.add_argument("--json", type=Path, metavar="PATH", help="also write the tables here")
    return arguments


def app_options(description: str) -> argparse.ArgumentParser:
    """``options`` plus ``--env``, for the scripts that launch the app."""
    arguments = options(description)
    arguments.add_argument(
        "--env",
        type=env_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set in the launched pages' environment, to try a lever "
        "(e.g. ORT_MEMORY_ARENA=0); repeatable",
    )
    return arguments


def env_setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not name or not equals:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def models(args: argparse.Namespace) -> list[Path]:
    """The ``--model`` paths, checked up front so a typo fails before minutes of work."""
    paths = [path.resolve() for path in args.model or [DEFAULT_MODEL]]
    for path in paths:
        if not path.is_file() or not path.with_suffix(".json").is_file():
            sys.exit(
                f"error: {path} (and its .json) not found; make one with\n"
                "  .venv/bin/python convert_model.py --weights random --seed 0 "
                "--output /tmp/bench/inception_v3.onnx"
            )
    return paths


def machine() -> dict[str, Any]:
    """Where the figures were taken: they mean little without it."""
    cpu = platform.processor() or "unknown"
    with Path("/proc/cpuinfo").open() as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_kb = 0
    with Path("/proc/meminfo").open() as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    versions = {}
    for package in ("onnxruntime", "gradio", "numpy", "pillow", "tensorflow-cpu", "keras"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1e6, 1),
        "python": platform.python_version(),
        "versions": versions,
    }


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """Rows of dicts as aligned columns, the keys of the first row as headers."""
    print(f"\n{title}")
    if not rows:
        print("  (no rows)")
        return
    headers = list(rows[0])
    cells = [[format_cell(row.get(header, "")) for header in headers] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  " + "  ".join("-" * w for w in widths))
    for row in cells:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def report(args: argparse.Namespace, name: str, tables: dict[str, list[dict[str, Any]]]) -> None:
    """Print every table, and write them all with the machine and the options to --json."""
    for title, rows in tables.items():
        print_table(title, rows)
    if args.json:
        payload = {
            "benchmark": name,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "options": {key: _jsonable(value) for key, value in vars(args).items()},
            "tables": tables,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return str(value) if isinstance(value, Path) else value


# --- timing ----------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    """The ``share`` (0..1) quantile, interpolated: enough for a few hundred samples."""
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def milliseconds(seconds: list[float]) -> dict[str, float]:
    """Median and tail of a list of durations, in ms."""
    return {
        "median_ms": statistics.median(seconds) * 1e3,
        "p95_ms": percentile(seconds, 0.95) * 1e3,
    }


def interleaved(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Time each call ``repeats`` times, in turn (A B C A B C ...), after warm-up.

    Taking turns spreads any drift of a shared machine (other jobs, clock
    boost, caches) evenly over the contenders instead of onto one of them.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


# --- the app as a process: tests/support/harness.py -------------------------------


@contextmanager
def serving(
    model: Path,
    log: Path,
    script: str = "app.py",
    env: dict[str, str] | None = None,
    watch_memory: bool = True,
) -> Iterator[Instance]:
    """``script`` launched by the harness as the Procfile does, on loopback only, until
    the block ends: a benchmark has no business listening beyond this machine. A benchmark
    of time turns ``watch_memory`` off: the samples would take CPU from what it times."""
    instance = harness.launch(
        model, log, script=script, watch_memory=watch_memory, HOST="127.0.0.1", **(env or {})
    )
    try:
        harness.wait_until_ready(instance, READY_PATHS[script], timeout=300)
        yield instance
    finally:
        harness.stop(instance)


# --- calling the page ------------------------------------------------------

REQUEST_TIMEOUT = 120


def connect(url: str) -> Any:
    """A gradio_client ``Client``, quiet and without telemetry."""
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


def classify_over_http(client: Any, photo: Path) -> dict[str, Any]:
    """Upload ``photo`` to ``/predict`` with gradio_client; the Label's value."""
    from gradio_client import handle_file

    job = client.submit(handle_file(str(photo)), api_name="/predict")
    return job.result(timeout=REQUEST_TIMEOUT)


class PageClient:
    """The page's protocol over plain HTTP: upload, start a call, read its result.

    Bursts use it rather than gradio_client, whose own machinery (a stream
    reader, heartbeats, polling) costs more CPU per request than the page's
    upload and answer; on a 2-core machine that would be measured as the
    page's slowness.
    """

    def __init__(self, url: str) -> None:
        import httpx

        self._http = httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT)

    def classify(self, photo: Path) -> None:
        with photo.open("rb") as image:
            upload = self._http.post("gradio_api/upload", files={"files": (photo.name, image)})
        path = upload.raise_for_status().json()[0]
        payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}]}
        call = self._http.post("gradio_api/call/predict", json=payload).raise_for_status()
        answer = self._http.get(f"gradio_api/call/predict/{call.json()['event_id']}")
        if "event: complete" not in answer.raise_for_status().text:
            raise RuntimeError(f"no result: {answer.text[:300]!r}")

    def close(self) -> None:
        self._http.close()


class RestClient:
    """``POST /classify``, the image as a multipart field, over one kept-alive connection.

    As lean as curl: the standard library's ``http.client`` costs 0.25 ms of
    CPU a request here, httpx 1.5 ms, which on a 2-core machine would be
    counted as the server's time. Bodies are encoded once per photo.
    """

    def __init__(self, url: str) -> None:
        address = urllib.parse.urlsplit(url)
        self._connection = http.client.HTTPConnection(
            address.hostname, address.port, timeout=REQUEST_TIMEOUT
        )
        self._bodies: dict[Path, tuple[bytes, str]] = {}

    def _body(self, photo: Path) -> tuple[bytes, str]:
        if photo not in self._bodies:
            import httpx

            request = httpx.Request(
                "POST", "http://app/classify", files={"file": (photo.name, photo.read_bytes())}
            )
            self._bodies[photo] = request.read(), request.headers["content-type"]
        return self._bodies[photo]

    def classify(self, photo: Path) -> None:
        body, content_type = self._body(photo)
        for attempt in (1, 2):  # the server closes connections idle for 5 s: reconnect once
            try:
                self._connection.request("POST", "/classify", body, {"Content-Type": content_type})
                response = self._connection.getresponse()
                answer = response.read()
                break
            except ConnectionError:  # http.client.RemoteDisconnected included
                self._connection.close()
                if attempt == 2:
                    raise
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {answer[:300]!r}")

    def close(self) -> None:
        self._connection.close()


PROTOCOLS = {"rest": RestClient, "page": PageClient}


@dataclass
class Burst:
    """What a burst of requests gave: a latency per success, a message per failure."""

    latencies: list[float]
    errors: list[str]
    seconds: float

    def summary(self) -> dict[str, Any]:
        done = self.latencies or [float("nan")]
        return {
            "requests": len(self.latencies) + len(self.errors),
            "errors": len(self.errors),
            "req_per_s": len(self.latencies) / self.seconds,
            "p50_ms": percentile(done, 0.50) * 1e3,
            "p95_ms": percentile(done, 0.95) * 1e3,
            "max_ms": max(done) * 1e3,
        }


def burst(
    url: str,
    photos: list[Path],
    requests: int,
    clients: int,
    time_limit: float,
    protocol: str = "rest",
) -> Burst:
    """``requests`` classifications from ``clients`` concurrent clients; stops at ``time_limit`` s.

    Request ``i`` sends ``photos[i % len(photos)]``. Each client is a thread
    with its own HTTP connection, made before the clock starts.
    """
    connections = [PROTOCOLS[protocol](url) for _ in range(clients)]
    tickets = iter(range(requests))
    tickets_lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_limit

    def next_ticket() -> int | None:
        with tickets_lock:
            ticket = next(tickets, None)
            return ticket if time.monotonic() < deadline else None

    def work(client: RestClient | PageClient) -> None:
        while (ticket := next_ticket()) is not None:
            start = time.perf_counter()
            try:
                client.classify(photos[ticket % len(photos)])
                latencies.append(time.perf_counter() - start)
            except Exception as error:  # any failure is a counted error, not a crash
                errors.append(f"{type(error).__name__}: {error}")

    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(work, connections))
    finally:
        for client in connections:
            client.close()
    return Burst(latencies, errors, time.perf_counter() - start)


# --- Keras on the same weights ---------------------------------------------


def keras_weights(model: Path) -> Any:
    """The ``WeightsSource`` an ONNX model was converted from, read from its metadata."""
    from conversion.errors import WeightsError
    from conversion.keras_model import WeightsSource

    weights = json.loads(model.with_suffix(".json").read_text())["weights"]
    try:
        return WeightsSource.from_description(weights, model.parent)
    except WeightsError as error:
        sys.exit(f"error: {model}: {error}")
