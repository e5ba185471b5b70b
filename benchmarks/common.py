"""What every benchmark shares: options, tables, the app as a process, its memory.

Each script in this folder is run as ``.venv/bin/python benchmarks/NAME.py``,
so this module also puts the repository root on ``sys.path`` (for
``classifier`` and ``conversion``). It never imports TensorFlow or
onnxruntime itself: the scripts decide what enters their process.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# gradio_client sends telemetry unless this says otherwise (its own flag is not enough).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from classifier import assets  # noqa: E402  (needs the root on sys.path)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_MODEL = assets.DEFAULT_MODEL_PATH
CAT_PHOTO = ROOT / "examples" / "chelsea.png"
SAMPLE_PHOTOS = ROOT.parent / "shared" / "assets" / "imagenet-sample"
HEROKU_MEMORY_MB = 512
APPS = {"ours": "app.py", "keras": "benchmarks/keras_app.py"}
"""The two pages compared: ours, and the same page on Keras (``keras_app.py``)."""
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


# --- the app as a process --------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def web_command(script: str = "app.py") -> str:
    """The Procfile's web command, serving ``script``, bound to loopback only.

    ``setup.sh`` binds Gradio to all interfaces, as Heroku needs; a benchmark
    has no business listening beyond this machine, so the host is set back to
    127.0.0.1 after it. Everything else (``$PORT``, the environment) is Heroku's.
    """
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            setup, _, run = line.removeprefix("web:").strip().partition(" && ")
            if run != "python app.py":
                sys.exit(f"error: unexpected Procfile web command {line!r}")
            return f"{setup} && export GRADIO_SERVER_NAME=127.0.0.1 && python {script}"
    sys.exit("error: Procfile has no web process")


class PeakRss(threading.Thread):
    """Samples a process tree's resident memory every ``interval`` s, keeping the peak.

    Started right after launch, it catches the peak while the model loads,
    which a look at the steady state after start-up would miss. Heroku counts
    every process in the dyno, so children are summed with their parent.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        import psutil

        self._psutil = psutil
        self._root = psutil.Process(pid)
        self._interval = interval
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.peak = 0
        self.current = 0
        self.samples = 0

    def tree_rss(self) -> int:
        total = 0
        try:
            processes = [self._root, *self._root.children(recursive=True)]
        except self._psutil.Error:
            return 0
        for process in processes:
            with contextlib.suppress(self._psutil.Error):  # it exited meanwhile
                total += process.memory_info().rss
        return total

    def run(self) -> None:
        while not self._done.is_set():
            rss = self.tree_rss()
            with self._lock:
                self.current = rss
                self.peak = max(self.peak, rss)
                self.samples += 1
            self._done.wait(self._interval)

    def take_peak(self) -> float:
        """The peak in MB since the last call, starting a new window."""
        with self._lock:
            peak, self.peak = self.peak, self.current
        return peak / MB

    def stop(self) -> None:
        self._done.set()
        self.join()


@dataclass
class Server:
    """A running app: where it answers, since when, and its memory sampler."""

    url: str
    process: subprocess.Popen
    memory: PeakRss
    launched: float
    serving_after: float = 0.0


def wait_until_serving(server: Server, log: Path, timeout: float) -> None:
    """Poll the page every 20 ms until it answers 200, so start-up is timed closely."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            sys.exit(f"error: the app exited with {server.process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(server.url, timeout=2) as response:
                if response.status == 200:
                    server.serving_after = time.perf_counter() - server.launched
                    return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"error: the app did not answer at {server.url} within {timeout} s; see {log}")


def stop(process: subprocess.Popen) -> None:
    """End the app's whole process group (bash and python), politely first."""
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


@contextmanager
def serving(
    model: Path,
    log: Path,
    script: str = "app.py",
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> Iterator[Server]:
    """Launch ``script`` as the Procfile does, on a free loopback port, until the block ends.

    The venv's ``python`` comes first on PATH, as on Heroku; output goes to
    ``log`` (a pipe nobody reads would fill up and stall the app).
    """
    port = free_port()
    environment = {
        **os.environ,
        "PORT": str(port),
        "MODEL_PATH": str(model),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **(env or {}),
    }
    launched = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(
            ["bash", "-c", web_command(script)],
            cwd=ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    memory = PeakRss(process.pid)
    memory.start()
    server = Server(f"http://127.0.0.1:{port}/", process, memory, launched)
    try:
        wait_until_serving(server, log, timeout)
        yield server
    finally:
        stop(process)
        memory.stop()


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


class PlainClient:
    """The Gradio API over plain HTTP: upload, start a call, read its result.

    The README's curl recipe. Bursts use it rather than gradio_client, whose
    own machinery (a stream reader, heartbeats, polling) costs more CPU per
    request than the page's upload and answer; on a 2-core machine that
    would be measured as the page's slowness.
    """

    def __init__(self, url: str) -> None:
        import httpx

        self._http = httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT)

    def classify(self, photo: Path) -> dict[str, Any]:
        with photo.open("rb") as image:
            upload = self._http.post("gradio_api/upload", files={"files": (photo.name, image)})
        path = upload.raise_for_status().json()[0]
        payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}]}
        call = self._http.post("gradio_api/call/predict", json=payload).raise_for_status()
        answer = self._http.get(f"gradio_api/call/predict/{call.json()['event_id']}")
        events = dict(_server_sent_events(answer.raise_for_status().text))
        if "complete" not in events:
            raise RuntimeError(f"no result: {answer.text[:300]!r}")
        return json.loads(events["complete"])[0]

    def close(self) -> None:
        self._http.close()


def _server_sent_events(text: str) -> Iterator[tuple[str, str]]:
    """``event: NAME`` / ``data: JSON`` pairs of a server-sent event stream."""
    event = ""
    for line in text.splitlines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            yield event, line.removeprefix("data:").strip()


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
            "p99_ms": percentile(done, 0.99) * 1e3,
        }


def burst(url: str, photo: Path, requests: int, clients: int, time_limit: float) -> Burst:
    """``requests`` classifications from ``clients`` concurrent clients; stops at ``time_limit`` s.

    Each client is a thread with its own HTTP connection, made before the
    clock starts.
    """
    connections = [PlainClient(url) for _ in range(clients)]
    tickets = iter(range(requests))
    tickets_lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_limit

    def next_ticket() -> bool:
        with tickets_lock:
            return next(tickets, None) is not None and time.monotonic() < deadline

    def work(client: PlainClient) -> None:
        while next_ticket():
            start = time.perf_counter()
            try:
                client.classify(photo)
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
    from conversion.keras_model import WeightsError, WeightsSource

    weights = json.loads(model.with_suffix(".json").read_text())["weights"]
    try:
        return WeightsSource.from_description(weights, model.parent)
    except WeightsError as error:
        sys.exit(f"error: {model}: {error}")
