"""Start the app as Heroku does: the Procfile's command, one instance or two behind HAProxy.

Tests and benchmarks both launch the app through here. Each instance runs
the Procfile's web command in bash with ``$PORT`` set and this
interpreter's ``python`` first on PATH; its output goes to a log file (a
pipe nobody reads would fill and stall it).
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from classifier.assets import ROOT
from tests.support.budgets import START_UP_WAIT_S

AFFINITY_COOKIE = "heroku-session-affinity"
"""The cookie Heroku's router sets when session affinity is enabled."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def procfile_command(script: str = "app.py") -> str:
    """The Procfile's web command, running ``script`` (another page, for comparison) if asked."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            command = line.removeprefix("web:").strip()
            if not command.endswith("python app.py"):
                raise AssertionError(f"unexpected Procfile web command {command!r}")
            return command.removesuffix("app.py") + script
    raise AssertionError("Procfile has no web process")


class ProcessMemory:
    """An app's memory as a dyno counts it: the server and its decoder processes together.

    Each page counts once. The server counts its resident pages; its decoders
    (a zygote and the workers it forks, which share the zygote's pages) their
    proportional ones (PSS: a page that n processes map counts 1/n in each),
    less their share of the pages of files the server maps too (libpython,
    numpy's and Pillow's libraries: already in the server's count). That
    share only grows as a decoder runs more of a library, and is read again
    at most every ``REFRESH_S`` (a full ``smaps`` costs milliseconds): in
    between, a little is counted twice, never too little. With ``watch``, the tree
    is sampled, as one sum, every ``SAMPLE_S`` by a thread of this process: a
    dyno's cgroup sees the processes together, and adding each process's own
    peak would add peaks that never met. A decode's buffers live for hundreds
    of milliseconds, far longer than a sample. A sample costs about 3 ms of
    CPU: a latency benchmark does without (``watch=False``, peaks are then
    only what ``take_peak`` sees).
    """

    SAMPLE_S = 0.02
    REFRESH_S = 1.0

    def __init__(self, pid: int, watch: bool = True) -> None:
        if not Path(f"/proc/self/task/{os.getpid()}/children").exists():
            raise RuntimeError("this kernel lists no children in /proc (CONFIG_PROC_CHILDREN)")
        self._pid = pid
        self._shared: dict[int, tuple[float, int]] = {}
        """A decoder's pid -> when it was read, and its PSS in the files the server maps."""
        self._peak = 0
        self._peak_processes: dict[str, int] = {}
        self.peak_processes: dict[str, int] = {}
        """What each process held at the peak ``take_peak`` last returned, by pid and
        command: why a peak was high."""
        self._lock = threading.Lock()
        if watch:
            threading.Thread(target=self._sample, name=f"memory of {pid}", daemon=True).start()

    @property
    def current(self) -> int:
        """Bytes now."""
        return sum(self.processes().values())

    def processes(self) -> dict[str, int]:
        """Bytes now, by process (``pid command``)."""
        own = _read(f"/proc/{self._pid}/cmdline")
        held = {_name(self._pid, own): _field(f"/proc/{self._pid}/status", "VmRSS")}
        children = _descendants(self._pid)
        server_files = functools.cache(functools.partial(_mapped_files, self._pid))  # once
        for child in children:
            command = _read(f"/proc/{child}/cmdline")
            # A child still running the server's command has not exec'd yet: a vfork()ed
            # child maps the server's own pages (its PSS would count them twice).
            if command != own:
                held[_name(child, command)] = self._own_pss(child, server_files)
        self._shared = {pid: read for pid, read in self._shared.items() if pid in children}
        return held

    def _own_pss(self, child: int, server_files: Callable[[], set[str]]) -> int:
        """A decoder's PSS less its share of the pages of ``server_files()``."""
        pss = _field(f"/proc/{child}/smaps_rollup", "Pss")
        read_at, shared = self._shared.get(child, (-self.REFRESH_S, 0))
        if time.monotonic() - read_at >= self.REFRESH_S:
            shared = _pss_in_files(child, server_files())
            self._shared[child] = (time.monotonic(), shared)
        return max(0, pss - shared)

    def take_peak(self) -> int:
        """The peak bytes since launch or the last call, starting a new window."""
        with self._lock:
            self._record(self.processes())
            peak, self.peak_processes = self._peak, self._peak_processes
            self._peak, self._peak_processes = 0, {}
        return peak

    def _record(self, held: dict[str, int]) -> None:
        if sum(held.values()) > self._peak:
            self._peak, self._peak_processes = sum(held.values()), held

    def _sample(self) -> None:
        while Path(f"/proc/{self._pid}").exists():
            held = self.processes()
            with self._lock:
                self._record(held)
            time.sleep(self.SAMPLE_S)


def _descendants(pid: int) -> list[int]:
    """``pid``'s children, theirs, and so on, from the kernel's per-thread lists (a tenth
    of what scanning every process costs)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    listed = (_read(f"/proc/{pid}/task/{task}/children") for task in tasks)
    children = [int(child) for text in listed for child in text.split()]
    return [*children, *(grandchild for child in children for grandchild in _descendants(child))]


def _mapped_files(pid: int) -> set[str]:
    """The files ``pid`` maps (its libraries), by path."""
    lines = (line.split(maxsplit=5) for line in _read(f"/proc/{pid}/maps").splitlines())
    return {fields[5] for fields in lines if len(fields) == 6 and fields[5].startswith("/")}


def _pss_in_files(pid: int, files: set[str]) -> int:
    """Bytes of ``pid``'s PSS in mappings of ``files``."""
    total, counting = 0, False
    for line in _read(f"/proc/{pid}/smaps").splitlines():
        fields = line.split(maxsplit=5)
        if fields and not fields[0].endswith(":"):  # a mapping's header: its range first
            counting = len(fields) == 6 and fields[5] in files
        elif counting and fields[0] == "Pss:":
            total += int(fields[1]) * 1024
    return total


def _name(pid: int, command: str) -> str:
    return f"{pid} {command.replace(chr(0), ' ').strip()[:60]}"


def _read(path: str) -> str:
    """A /proc file's text; empty once the process has exited."""
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _field(path: str, name: str) -> int:
    """A ``Name: N kB`` line of a /proc file, in bytes; 0 once the process has exited
    (a zombie's files lack the line)."""
    _, found, rest = _read(path).partition(f"\n{name}:")
    return int(rest.split()[0]) * 1024 if found else 0


@dataclass
class Instance:
    """A running app: where it answers, its process, its log and its memory."""

    url: str
    process: subprocess.Popen
    log: Path
    memory: ProcessMemory
    launched: float
    ready_after: float = 0.0


def launch(
    model_path: Path,
    log: Path,
    port: int | None = None,
    script: str = "app.py",
    watch_memory: bool = True,
    **env: str,
) -> Instance:
    """Run the Procfile's web command on ``port`` (a free one by default); ``watch_memory``:
    see ``ProcessMemory``."""
    port = port or free_port()
    environment = {
        **os.environ,
        "PORT": str(port),
        "MODEL_PATH": str(model_path),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **env,
    }
    launched = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(
            ["bash", "-c", procfile_command(script)],
            cwd=ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Instance(
        f"http://127.0.0.1:{port}/",
        process,
        log,
        ProcessMemory(process.pid, watch_memory),
        launched,
    )


def wait_until_ready(
    instance: Instance, path: str = "readyz", timeout: float = START_UP_WAIT_S
) -> None:
    """Poll ``/readyz`` (or ``path``) every 20 ms until the model is loaded and warm."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if instance.process.poll() is not None:
            raise RuntimeError(
                f"the app exited with {instance.process.returncode}:\n{instance.log.read_text()}"
            )
        try:
            with urllib.request.urlopen(f"{instance.url}{path}", timeout=2) as response:
                if response.status == 200:
                    instance.ready_after = time.perf_counter() - instance.launched
                    return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"the app was not ready at {instance.url} within {timeout} s")


def stop(instance: Instance, timeout: float = 30) -> int:
    """SIGTERM, as Heroku sends; SIGKILL if it has not exited within ``timeout`` s."""
    if instance.process.poll() is None:
        os.killpg(instance.process.pid, 15)
        try:
            instance.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(instance.process.pid, 9)
            instance.process.wait()
    return instance.process.returncode


@contextmanager
def serving(model_path: Path, log: Path, **env: str) -> Iterator[Instance]:
    """One instance of the app, ready, until the block ends."""
    instance = launch(model_path, log, **env)
    try:
        wait_until_ready(instance)
        yield instance
    finally:
        stop(instance)


@dataclass
class Balancer:
    url: str
    instances: list[Instance]


HAPROXY_CONFIG = """\
global
    maxconn 512
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend web
    bind 127.0.0.1:{port}
    default_backend app
backend app
    balance roundrobin
{cookie}
{servers}
"""


def haproxy_config(port: int, backends: list[str], affinity: bool) -> str:
    """Round-robin over ``backends``; with ``affinity``, pinned by Heroku's cookie."""
    cookie = f"    cookie {AFFINITY_COOKIE} insert indirect nocache" if affinity else ""
    servers = "\n".join(
        f"    server app{number} {backend}" + (f" cookie app{number}" if affinity else "")
        for number, backend in enumerate(backends)
    )
    return HAPROXY_CONFIG.format(port=port, cookie=cookie, servers=servers)


@contextmanager
def balanced(
    model_path: Path, folder: Path, instances: int = 2, affinity: bool = False, **env: str
) -> Iterator[Balancer]:
    """``instances`` apps behind HAProxy, as ``heroku ps:scale web=N`` puts them behind
    the router."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    apps = [launch(model_path, folder / f"app{n}.log", **env) for n in range(instances)]
    port = free_port()
    config = folder / "haproxy.cfg"
    backends = [app.url.removeprefix("http://").rstrip("/") for app in apps]
    config.write_text(haproxy_config(port, backends, affinity))
    proxy = None
    try:
        for app in apps:
            wait_until_ready(app)
        proxy = subprocess.Popen(
            [haproxy, "-f", str(config), "-db"],
            stdout=(folder / "haproxy.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        _wait_for_port(port, proxy)
        yield Balancer(f"http://127.0.0.1:{port}/", apps)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=10)
        for app in apps:
            stop(app)


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"haproxy did not listen on {port} within {timeout} s")


def wait_for(condition: Callable[[], object], timeout: float = 30, every: float = 0.005) -> None:
    """Poll ``condition`` until it holds; fail, rather than hang, after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s for {condition}")
        time.sleep(every)


# --- calling an instance ------------------------------------------------------


def classify(http: httpx.Client, path: Path, **params: object) -> httpx.Response:
    with path.open("rb") as image:
        return http.post("classify", files={"file": (path.name, image)}, params=params)


def metric(client: httpx.Client, sample: str, /, **labels: str) -> float:
    """One sample of the app's /metrics, summed over the labels not named."""
    return metrics(client, sample, **labels)[0]


def metrics(client: httpx.Client, *samples: str, **labels: str) -> list[float]:
    """Samples from one scrape of the app's /metrics (parsed by prometheus-client's own
    parser), each summed over the labels not named."""
    totals = dict.fromkeys(samples, 0.0)
    for family in text_string_to_metric_families(client.get("metrics").text):
        for found in family.samples:
            if found.name in totals and all(found.labels.get(k) == v for k, v in labels.items()):
                totals[found.name] += found.value
    return list(totals.values())
