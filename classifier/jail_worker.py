"""The decoder jail's processes: a zygote that forks workers, and the workers' loop.

Run as ``python -m classifier.jail_worker`` by ``classifier.jail`` with a
clean environment (no secrets) and one socket to the server. The zygote
imports the decoders (Pillow, libvips, numpy) and nothing else, then forks a
worker each time the server asks: a worker starts small, sharing the
zygote's pages, and holds nothing of the server's (no sockets, no settings,
no model). Each worker decodes one upload at a time: it reads the header and
sends the server its cost; once the server's memory budget admits it, the
kernel bounds the decode to that cost (``RLIMIT_DATA``) and to a CPU time
(``RLIMIT_CPU``). What goes back is the model's input pixels and the photo,
as raw bytes behind a JSON header: never a pickle, which a subverted worker
could make run code in the server.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import re
import resource
import signal
import socket
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any, BinaryIO

from classifier.heap import TRIM_AFTER, release_freed_memory
from classifier.options import MB
from classifier.preprocess import Admission, ImageError, configure_vips, decode_with_photo

log = logging.getLogger("classifier.jail")

SOCKET_BUFFER = 4 * MB
"""Room in each direction of a worker's socket: a 640 px photo's pixels (1.2 MB) at once."""
LIMITS = (resource.RLIMIT_DATA, resource.RLIMIT_CPU)
WEBP_CANVAS_BYTES = 12
"""Address space a WebP reserves a canvas pixel and never touches unless drawn on: two
RGBA canvases libwebp allocates as Pillow reads the header, and the RGBA frame libvips
allocates for its shrinking decode."""
TRIM_AFTER_JOB = 8 * MB
"""After a decode that cost this much (and less than ``TRIM_AFTER``, past which the worker
retires), the worker hands its heap's free pages back: kept, they would be its own, outside
the budget, for as long as it lives (up to 12 MB seen). After a smaller one, faulting them
in again on the next decode would cost more than they are worth."""
REFUSALS = {"ImageError", "ImageTooLargeError", "UnsupportedImageError"}
"""The errors a worker reports by name (a subclass by the nearest of them): the user's,
with their message and status."""


class NotAdmittedError(Exception):
    """The server did not admit the decode (busy, or over the budget): nothing to decode."""


def send_json(conn: Connection, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message).encode())


def data_in_use() -> int | None:
    """The process's data segment now (heap and private mappings), as RLIMIT_DATA counts it;
    ``None`` where the kernel does not say (macOS, which does not hold a process's mapped
    memory to RLIMIT_DATA either: there the CPU time and the deadline bound a decode)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[5]) * resource.getpagesize()
    except FileNotFoundError:
        return None


@contextmanager
def bounded(conn: Connection, job: dict[str, Any], reserved: int = 0) -> Iterator[Admission]:
    """The kernel's limits on one job, held from its first byte read to its last.

    Memory: what the server ``admitted`` ahead, until the decoder asks for more;
    then, once the server admits that cost, the cost. Either way plus the job's
    ``data_slack``, and what the decoder ``reserved`` without touching it, above
    what the process held when the job began. CPU: ``cpu_seconds``. Yields the
    ``admit`` the decoder calls with its cost.
    """
    hard = {
        kind: resource.getrlimit(kind)[1] for kind in (resource.RLIMIT_DATA, resource.RLIMIT_CPU)
    }
    base = data_in_use()
    held = job["admitted"]

    def hold(memory: int) -> None:
        if base is None:
            return
        limit = base + memory + job["data_slack"] + reserved
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard[resource.RLIMIT_DATA]))

    @contextmanager
    def admit(cost: int) -> Iterator[None]:
        nonlocal held
        job["cost"] = cost
        if cost > held:
            send_json(conn, {"cost": cost})
            if conn.recv()[0] != "go":
                raise NotAdmittedError
            held = cost
            hold(cost)
        yield

    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu_limit = math.ceil(used.ru_utime + used.ru_stime + job["cpu_seconds"])
    hold(held)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, hard[resource.RLIMIT_CPU]))
    try:
        yield admit
    finally:
        for kind, limit in hard.items():
            resource.setrlimit(kind, (limit, limit))


def source_of(conn: Connection, job: dict[str, Any]) -> Any:
    """Where the upload is: a path, bytes sent along, or a file descriptor passed with them."""
    if job["kind"] == "fd":
        with socket.socket(fileno=os.dup(conn.fileno())) as channel:
            _, fds, _, _ = socket.recv_fds(channel, 1, 1)
        return os.fdopen(fds[0], "rb")
    return job["source"]


def reserved_by_header(source: str | bytes | BinaryIO, max_pixels: int) -> int:
    """Address space the decoders reserve for an upload and leave untouched: for WebP,
    full-canvas buffers (``WEBP_CANVAS_BYTES``), whose pages stay unmapped until drawn
    on, so they cost the budget nothing, but the kernel's limit counts them."""
    if isinstance(source, bytes):
        head = source[:30]
    elif isinstance(source, str):
        with open(source, "rb") as file:
            head = file.read(30)
    else:
        head = source.read(30)
        source.seek(0)
    return WEBP_CANVAS_BYTES * min(webp_canvas(head), max_pixels)


def webp_canvas(head: bytes) -> int:
    """A WebP's canvas in pixels, from its first 30 bytes; 0 for any other file."""
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP" or len(head) < 30:
        return 0
    chunk = head[12:16]
    if chunk == b"VP8X":
        return (1 + int.from_bytes(head[24:27], "little")) * (
            1 + int.from_bytes(head[27:30], "little")
        )
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return (width & 0x3FFF) * (height & 0x3FFF)
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (1 + (bits & 0x3FFF)) * (1 + ((bits >> 14) & 0x3FFF))
    return 0


def decode_one(conn: Connection, job: dict[str, Any]) -> bool:
    """One upload: its cost, then (once admitted) its pixels, or why it could not be read.

    Returns whether the worker retires: after a large decode its heap keeps the
    pages it grew to, and pages it shared with the zygote have become its own;
    a fresh fork costs ~10 ms, beside the second such a decode takes.
    """
    JOB_TAG.tag = job["log_tag"]
    source = source_of(conn, job)
    try:
        with bounded(conn, job, reserved_by_header(source, job["max_pixels"])) as admit:
            decoded = decode_with_photo(
                source, job["spec"], job["max_pixels"], admit, job["photo_side"]
            )
    except NotAdmittedError:
        return False
    except MemoryError:
        log.info("A decode passed its memory limit: this worker stops")
        send_json(conn, {"stopped": "memory"})
        return True
    except ImageError as error:
        kind = next(kind.__name__ for kind in type(error).__mro__ if kind.__name__ in REFUSALS)
        retiring = job.get("cost", 0) >= TRIM_AFTER
        send_json(conn, {"error": kind, "message": str(error), "retiring": retiring})
        return retiring
    finally:
        if hasattr(source, "close"):
            source.close()
    photo = decoded.photo
    retiring = job.get("cost", 0) >= TRIM_AFTER
    size = None if photo is None else list(photo.size)
    # Every frame ready before the first goes: the server reads them in one go.
    frames = [decoded.input.tobytes(), *([] if photo is None else [photo.tobytes()])]
    send_json(conn, {"input": list(decoded.input.size), "photo": size, "retiring": retiring})
    for frame in frames:
        conn.send_bytes(frame)
    return retiring


def work(conn: Connection) -> None:
    """A worker's life: jobs until the server closes its end (or the kernel stops it)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if decode_one(conn, job):
            return
        if job.get("cost", 0) >= TRIM_AFTER_JOB:
            release_freed_memory()


def serve_forks(control: socket.socket) -> None:
    """The zygote: for each byte the server sends, fork a worker and send back its pid and
    its end of a new socket pair. Workers are reaped by the kernel (``SIGCHLD`` ignored)."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # Heroku signals every process of a dyno at once: the decodes under way finish while
    # the server drains, and the workers and the zygote end when it closes their sockets.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    while control.recv(1):
        ours, theirs = socket.socketpair()
        for end in (ours, theirs):  # a photo's pixels in one write, not in 200 kB turns
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        pid = os.fork()
        if pid == 0:
            control.close()
            theirs.close()
            try:
                work(Connection(ours.detach()))
            finally:
                os._exit(0)
        ours.close()
        socket.send_fds(control, [pid.to_bytes(4, "little")], [theirs.fileno()])
        theirs.close()


class JobTag(logging.Filter):
    """Puts the job's tag (its request's id, from the server) on each record, and escapes
    what a decoder's words may carry of the file: one record, one line."""

    tag = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = self.tag
        record.msg = ONE_LINE.sub(lambda c: repr(c.group())[1:-1], record.getMessage())
        record.args = None
        return True


ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""What could break a log line or forge another."""
JOB_TAG = JobTag()


def main() -> None:
    handler = logging.StreamHandler()
    handler.addFilter(JOB_TAG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("pyvips").setLevel(logging.WARNING)
    configure_vips(int(os.environ.get("VIPS_THREADS", "1")))
    # The imports' objects stay shared with every worker: the collector never writes to them.
    gc.freeze()
    control = socket.socket(fileno=int(sys.argv[1]))
    serve_forks(control)


if __name__ == "__main__":
    main()
