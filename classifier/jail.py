"""The decoder jail: uploads are parsed and decoded in worker processes the kernel bounds.

A decoder is the largest attack surface of an image service: C libraries
reading bytes a stranger chose. The server process never runs one on an
upload. A zygote process (``classifier.jail_worker``), started with a clean
environment (no ``DATABASE_URL``, no tokens: nothing of the server's),
imports the decoders and forks workers; each worker decodes one upload at a
time and answers with pixels only.

Admission keeps its meaning: a worker reads the upload's header and reports
its cost; the server's memory budget decides when it may decode (first come,
first served, as before); then the kernel holds the decode to that cost
(``RLIMIT_DATA``) and to a CPU time (``RLIMIT_CPU``), and the server to a
wall-clock deadline. A worker that passes a limit dies or is killed, is
replaced, and its request is answered 413 or 422; the server and the other
requests go on.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import numpy as np
from PIL import Image

from classifier.admission import BusyError
from classifier.metadata import Preprocessing
from classifier.options import BASE_COST, MB
from classifier.preprocess import (
    EXACT_COST_PER_PIXEL,
    Geometry,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "MALLOC_MMAP_THRESHOLD_")
"""What a worker inherits of the server's environment: nothing secret, only what
the C libraries read (the locale, where temporary files go, glibc's tuning)."""
WORKER_ENVIRONMENT = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
"""A worker decodes one upload at a time: one thread's worth of arenas and pools."""
INLINE_BYTES = 1 << 20
"""Uploads up to this size are sent to the worker; larger ones go as a file descriptor."""
PREADMITTED = BASE_COST + EXACT_COST_PER_PIXEL * 1_000_000
"""Memory reserved for every decode before its cost is known: an upload of up to a
megapixel (most of what the web sends) costs less, and decodes without a second
round trip to the server; a larger one waits for its own cost in line."""
DATA_SLACK = 48 * MB
"""Room above a decode's estimated cost for what the estimate does not count: the
interpreter's objects, a library's bookkeeping and thread stacks, allocations the
allocator rounds up. The kernel refuses a worker memory past ``cost + DATA_SLACK``."""
HEADER_BYTES = 64 * 1024
"""The longest JSON header a worker may send back."""
EXIT_WAIT_S = 5.0
"""How long a killed worker may take to exit (a loaded machine schedules it late)."""
FORK_TIMEOUT_S = 30.0
"""How long the zygote may take to fork a worker (at start it is still importing)."""
ERRORS: dict[str, type[ImageError]] = {
    "ImageError": ImageError,
    "ImageTooLargeError": ImageTooLargeError,
    "UnsupportedImageError": UnsupportedImageError,
}

Admission = Callable[[int], AbstractContextManager[object]]
ImageFile = str | Path | bytes | BinaryIO


class DecodeStoppedError(ImageTooLargeError):
    """A decode took more memory or CPU than the kernel allowed it: the image costs more
    than its header says."""

    outcome = "decode_stopped"


class DecodeTimeoutError(ImageError):
    """A decode passed its wall-clock deadline and was killed."""

    status = 422
    outcome = "decode_timeout"


class IdleWorkerLostError(Exception):
    """A worker was found dead when handed a job, or died before its first answer: try
    another (a worker killed while idle must not fail a request)."""


class WorkerGoneError(Exception):
    """A worker's socket closed mid-job: the kernel stopped it at a limit."""


class WorkerProtocolError(Exception):
    """A worker answered something it never should: it is killed and replaced."""


@dataclass
class Worker:
    """One forked decoder: its pid (and on Linux a pidfd, so a kill can never reach
    another process) and the socket the server talks to it over."""

    pid: int
    pidfd: int | None
    conn: Connection
    clean: bool = True
    """Between jobs: safe to hand the next upload to."""
    retiring: bool = False
    """It said it exits after this job (a large one): a fresh one takes its place."""

    def kill(self) -> None:
        """Kill it and, where a pidfd says when (Linux), wait until it is gone: the memory
        of its last decode is free when this returns, not some milliseconds later."""
        with contextlib.suppress(ProcessLookupError):  # it died already
            if self.pidfd is None:  # macOS: no pidfd
                os.kill(self.pid, signal.SIGKILL)
            else:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                select.select([self.pidfd], [], [], EXIT_WAIT_S)  # readable once it exited
        if self.pidfd is not None:
            os.close(self.pidfd)
        self.conn.close()


@dataclass(frozen=True)
class Decoded:
    """What a worker sends back: the model's input pixels and, if asked for, the photo."""

    pixels: np.ndarray
    """Upright RGB uint8 ``(height, width, 3)`` at the model's input size."""
    photo: Image.Image | None


class DecoderJail:
    """``workers`` decoder processes, each decode bounded by the kernel and a deadline.

    ``timeout_s`` is each decode's wall-clock deadline and its CPU time;
    ``wait_s`` how long a request may wait for a free worker before a 503;
    ``vips_threads`` the threads each libvips decode uses.
    """

    def __init__(
        self, workers: int, timeout_s: float, wait_s: float, vips_threads: int = 1
    ) -> None:
        self.workers = workers
        self.vips_threads = vips_threads
        self.timeout_s = timeout_s
        self.wait_s = wait_s
        self.data_slack = DATA_SLACK
        self._idle: queue.Queue[Worker] = queue.Queue()
        self._forking = threading.Lock()
        self._zygote: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._started = False

    def start(self) -> None:
        """Start the zygote and fork the workers (once; later calls do nothing)."""
        with self._forking:
            if self._started:
                return
            self._started = True
        for _ in range(self.workers):
            self._idle.put(self._fork())

    def decode(
        self,
        source: ImageFile,
        spec: Preprocessing,
        max_pixels: int,
        admit: Admission,
        photo_side: int | None,
        log_tag: str = "-",
    ) -> Decoded:
        """Decode ``source`` in a worker, once ``admit(cost)`` lets it, as ``decode_with_photo``
        would: the same pixels, bit for bit. The worker's log lines carry ``log_tag``."""
        self.start()
        for _ in range(self.workers + 1):
            try:
                return self._decode(source, spec, max_pixels, admit, photo_side, log_tag)
            except IdleWorkerLostError:
                log.warning("A decoder worker had died while idle: replaced")
        raise DecodeStoppedError(STOPPED)

    def _decode(
        self,
        source: ImageFile,
        spec: Preprocessing,
        max_pixels: int,
        admit: Admission,
        photo_side: int | None,
        log_tag: str,
    ) -> Decoded:
        # The worker is put back, or killed, before its reservation ends: a retiring one's
        # decode memory is gone before another decode may take its place in the budget.
        with ExitStack() as reserved, self._worker() as worker:
            reserved.enter_context(admit(PREADMITTED))
            self._send_job(worker, source, spec, max_pixels, photo_side, log_tag)
            try:
                reply = self._receive_json(worker)
            except WorkerGoneError as error:
                raise IdleWorkerLostError from error
            if "cost" in reply:  # more than was admitted ahead: wait for it in line
                reserved.close()
                try:
                    reserved.enter_context(admit(self._cost(reply)))
                except BaseException:
                    self._tell(worker, ("abort",))
                    raise
                self._tell(worker, ("go",))
                reply = self._receive_json(worker)
            if "input" not in reply:
                self._refused(worker, reply)
            return self._pixels(worker, reply, spec, photo_side)

    @staticmethod
    def _cost(reply: dict[str, Any]) -> int:
        cost = reply["cost"]
        if not isinstance(cost, int) or cost < 0:
            raise WorkerProtocolError(f"cost {cost!r}")
        return cost

    @contextmanager
    def _worker(self) -> Iterator[Worker]:
        """A free worker for one job; back to the pool if it ended the job cleanly, else
        killed and replaced by a new one."""
        try:
            worker = self._idle.get(timeout=self.wait_s)
        except queue.Empty:
            raise BusyError(
                "The server is busy with other images; please try again in a few seconds.",
                retry_after=max(1, round(self.wait_s / 4)),
            ) from None
        worker.clean = False
        try:
            yield worker
            worker.clean = True
        except (ImageError, BusyError) as error:
            worker.clean = not isinstance(error, DecodeStoppedError | DecodeTimeoutError)
            raise
        except IdleWorkerLostError:
            worker.clean = False
            raise
        except WorkerGoneError as error:
            log.warning("A decoder worker was stopped by a kernel limit: replaced")
            raise DecodeStoppedError(STOPPED) from error
        except WorkerProtocolError as error:
            log.error("A decoder worker broke its protocol (%s): replaced", error)
            raise DecodeStoppedError(STOPPED) from error
        finally:
            if worker.clean and not worker.retiring:
                self._idle.put(worker)
            else:
                worker.kill()
                self._idle.put(self._fork())

    def _tell(self, worker: Worker, message: tuple[str]) -> None:
        """Go on, or give up, mid-job; a worker gone meanwhile was stopped by the kernel."""
        try:
            worker.conn.send(message)
        except OSError as error:
            raise WorkerGoneError from error

    def _send_job(
        self,
        worker: Worker,
        source: ImageFile,
        spec: Preprocessing,
        max_pixels: int,
        photo_side: int | None,
        log_tag: str,
    ) -> None:
        """The job, with the upload as a path, its bytes, or its file descriptor."""
        job: dict[str, Any] = {
            "log_tag": log_tag,
            "spec": Geometry(spec.width, spec.height, spec.resize),
            "max_pixels": max_pixels,
            "photo_side": photo_side,
            "admitted": PREADMITTED,
            "data_slack": self.data_slack,
            "cpu_seconds": self.timeout_s,
        }
        fd = None
        if isinstance(source, str | Path):
            job |= {"kind": "path", "source": str(source)}
        elif isinstance(source, bytes):
            job |= {"kind": "bytes", "source": source}
        elif (fd := descriptor_of(source)) is None:
            source.seek(0)
            job |= {"kind": "bytes", "source": source.read()}
        else:
            job["kind"] = "fd"
        try:
            worker.conn.send(job)
            if fd is not None:
                with socket.socket(fileno=os.dup(worker.conn.fileno())) as channel:
                    socket.send_fds(channel, [b"\0"], [fd])
        except OSError as error:  # its end of the socket is gone
            raise IdleWorkerLostError from error

    def _receive(self, worker: Worker, maxlength: int) -> bytes:
        """The worker's next message, within the deadline; its death or silence, our error."""
        if not worker.conn.poll(self.timeout_s):
            log.warning("A decode passed its %.0f s deadline: its worker is killed", self.timeout_s)
            raise DecodeTimeoutError(
                f"This image took too long to decode (over {self.timeout_s:g} s) and was "
                "stopped. Please upload an ordinary photo: a baseline JPEG or a PNG."
            )
        try:
            return worker.conn.recv_bytes(maxlength)
        except (EOFError, ConnectionResetError) as error:
            raise WorkerGoneError from error
        except OSError as error:  # a message longer than ``maxlength``
            raise WorkerProtocolError(str(error)) from None

    def _receive_json(self, worker: Worker) -> dict[str, Any]:
        message = self._receive(worker, HEADER_BYTES)
        try:
            reply = json.loads(message)
        except ValueError as error:
            raise WorkerProtocolError("a header that is not JSON") from error
        if not isinstance(reply, dict):
            raise WorkerProtocolError("a header that is not an object")
        worker.retiring = reply.get("retiring") is True
        return reply

    def _refused(self, worker: Worker, reply: dict[str, Any]) -> NoReturn:
        """The worker's refusal, as the user's error; or its stop, as ours."""
        if reply.get("stopped") == "memory":
            worker.retiring = True
            raise DecodeStoppedError(STOPPED)
        kind, message = ERRORS.get(reply.get("error", "")), reply.get("message")
        if kind is None or not isinstance(message, str):
            raise WorkerProtocolError(f"reply {sorted(reply)!r}")
        raise kind(message[:1000])

    def _pixels(
        self, worker: Worker, reply: dict[str, Any], spec: Preprocessing, photo_side: int | None
    ) -> Decoded:
        """The input and the photo, checked against what was asked for before they are used."""
        if reply["input"] != [spec.width, spec.height]:
            raise WorkerProtocolError(f"input of {reply['input']!r}")
        pixels = self._rgb(worker, spec.width, spec.height)
        photo = None
        if photo_side:
            size = reply.get("photo")
            if not (
                isinstance(size, list)
                and len(size) == 2
                and all(isinstance(side, int) and 1 <= side <= photo_side for side in size)
            ):
                raise WorkerProtocolError(f"photo of {size!r}")
            photo = Image.fromarray(self._rgb(worker, *size))
        return Decoded(pixels, photo)

    def _rgb(self, worker: Worker, width: int, height: int) -> np.ndarray:
        expected = width * height * 3
        data = self._receive(worker, expected)
        if len(data) != expected:
            raise WorkerProtocolError(f"{len(data)} bytes for {width} x {height}")
        return np.frombuffer(data, np.uint8).reshape(height, width, 3)

    def close(self) -> None:
        """Stop the workers and the zygote (a later ``decode`` starts them again)."""
        with self._forking:
            self._started = False
            while not self._idle.empty():
                self._idle.get().kill()
            self._stop_zygote()

    def _fork(self) -> Worker:
        """A new worker from the zygote (started, or started again, as needed)."""
        with self._forking:
            for attempt in range(2):
                if self._zygote is None or self._zygote.poll() is not None:
                    self._start_zygote()
                assert self._control is not None
                try:
                    self._control.sendall(b"f")
                    message, fds, _, _ = socket.recv_fds(self._control, 4, 1)
                except OSError:
                    message, fds = b"", []
                if len(message) == 4 and len(fds) == 1:
                    pid = int.from_bytes(message, "little")
                    pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
                    return Worker(pid, pidfd, Connection(fds[0]))
                for fd in fds:
                    os.close(fd)
                log.warning("The decoders' zygote did not answer (try %d): restarting it", attempt)
                self._stop_zygote()
        raise RuntimeError("The decoders' zygote cannot be started: see the log above.")

    def _start_zygote(self) -> None:
        ours, theirs = socket.socketpair()
        environment = {name: os.environ[name] for name in ENVIRONMENT if name in os.environ}
        environment |= WORKER_ENVIRONMENT
        environment["PYTHONPATH"] = str(PACKAGE_ROOT)
        environment["VIPS_THREADS"] = str(self.vips_threads)
        self._zygote = subprocess.Popen(
            [sys.executable, "-m", "classifier.jail_worker", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=environment,
            stdin=subprocess.DEVNULL,
            cwd=PACKAGE_ROOT,
        )
        theirs.close()
        ours.settimeout(FORK_TIMEOUT_S)
        self._control = ours

    def _stop_zygote(self) -> None:
        if self._control is not None:
            self._control.close()
        if self._zygote is not None:
            self._zygote.kill()
            self._zygote.wait()
        self._zygote = self._control = None


STOPPED = (
    "This image is too costly to decode: it needed more memory or time than its size "
    "promises, and its decode was stopped. Please upload an ordinary photo: a baseline "
    "JPEG or a PNG."
)


def descriptor_of(source: BinaryIO) -> int | None:
    """The file descriptor behind a large upload on disk; ``None`` for one held in memory."""
    source.seek(0, io.SEEK_END)
    size = source.tell()
    source.seek(0)
    if size <= INLINE_BYTES:
        return None
    try:
        return source.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
