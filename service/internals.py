"""Every use of Gradio's and uvicorn's private attributes, in one place, checked at start.

Neither library has a public way to do what this app needs: slow down
Gradio's queue polling (1,000 wake-ups a second at idle), hand an upload to
our own decoder undecoded (and only a file the page holds), switch on
Gradio's upload-folder check under a mounted app, cap the queue per client,
clean up an upload that fails mid-stream, drain on SIGTERM instead of
closing at once, and bound a connection before its first request. Each is
done here, and ``check`` verifies, before the app binds its port, that the
installed versions still have the shape these rely on: an upgrade that
changes them stops the app with one line (and fails
``tests/test_internals.py``) instead of silently doing nothing.
"""

from __future__ import annotations

import asyncio
import functools
import http
import inspect
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from classifier.errors import ClassifierError

log = logging.getLogger(__name__)

VERIFIED = {"gradio": "6.31.0", "uvicorn": "0.54.0"}
"""The versions whose private attributes this module was written against."""
QUEUE_POLLING = ("sleep_when_free", "progress_update_sleep_when_free")


class InternalsError(ClassifierError):
    """An installed Gradio or uvicorn no longer has what this module reaches into."""

    exit_code = 9  # after the converter's 1 to 8


def check() -> None:
    """Raise ``InternalsError`` if the installed libraries lack what this module uses."""
    import gradio as gr
    from gradio.components.image import ImageData

    problems = []
    with gr.Blocks(analytics_enabled=False) as probe:
        pass
    probe.queue()
    queue = getattr(probe, "_queue", None)
    if queue is None or not all(hasattr(queue, name) for name in QUEUE_POLLING):
        problems.append(f"gradio: Blocks._queue has no {' or '.join(QUEUE_POLLING)}")
    if list(inspect.signature(gr.Image.preprocess).parameters) != ["self", "payload"]:
        problems.append("gradio: Image.preprocess no longer takes (self, payload)")
    if "path" not in ImageData.model_fields:
        problems.append("gradio: an image's upload payload has no `path`")
    problems += gradio_upload_problems(probe)
    if not isinstance(getattr(probe, "fns", None), dict):
        problems.append("gradio: Blocks.fns no longer maps the page's events by their fn_index")
    problems += uvicorn_protocol_problems()
    if parameters(uvicorn_handle_exit()) != ["self", "sig", "frame"]:
        problems.append("uvicorn: Server.handle_exit no longer takes (self, sig, frame)")
    server = uvicorn.Server(uvicorn.Config(app=lambda *args: None, log_config=None))
    if not isinstance(getattr(server, "_captured_signals", None), list):
        problems.append("uvicorn: Server has no _captured_signals list")
    if "self.handle_exit" not in inspect.getsource(uvicorn.Server.capture_signals):
        problems.append("uvicorn: Server.capture_signals no longer routes signals to handle_exit")
    if problems:
        installed = ", ".join(f"{name} {version(name)}" for name in VERIFIED)
        raise InternalsError(
            f"{installed} changed what service/internals.py relies on "
            f"(written for {', '.join(f'{n} {v}' for n, v in VERIFIED.items())}): "
            + "; ".join(problems)
        )
    for name, verified in VERIFIED.items():
        if version(name) != verified:
            log.warning("%s %s: internals verified with %s only", name, version(name), verified)


def uvicorn_handle_exit() -> Callable[..., None]:
    """uvicorn's own ``Server.handle_exit``, through the wrapper sse-starlette puts on it when
    imported (by Gradio's MCP support, where ``mcp`` is installed), which passes every call on."""
    handle_exit = uvicorn.Server.handle_exit
    if handle_exit.__qualname__ == "AppStatus.handle_exit":
        from sse_starlette.sse import AppStatus

        return AppStatus.original_handler  # type: ignore[no-any-return]
    return handle_exit


def parameters(function: Callable[..., object]) -> list[str]:
    return list(inspect.signature(function).parameters)


def gradio_upload_problems(probe: Any) -> list[str]:
    """What ``check_uploads``, ``holds``, ``cap_queue_per_client`` and
    ``clean_up_failed_uploads`` rely on, missing from the installed Gradio."""
    from gradio import processing_utils, queueing
    from gradio.route_utils import GradioMultiPartParser

    problems = []
    check_allowed = getattr(processing_utils, "_check_allowed", None)
    if check_allowed is None or "blocks.has_launched" not in inspect.getsource(check_allowed):
        problems.append("gradio: the upload-folder check no longer waits for has_launched")
    sets = getattr(probe, "temp_file_sets", None)
    if not (isinstance(sets, list) and getattr(probe, "upload_file_set", None) in sets):
        problems.append("gradio: Blocks.temp_file_sets no longer lists upload_file_set")
    queue = probe._queue
    if parameters(queue.push) != ["body", "request", "username"] or not isinstance(
        getattr(queue, "event_queue_per_concurrency_id", None), dict
    ):
        problems.append("gradio: the queue's push or event_queue_per_concurrency_id changed")
    if "request" not in parameters(queueing.Event) or "self.queue" not in inspect.getsource(
        queueing.EventQueue.__init__
    ):
        problems.append("gradio: queued events no longer keep their request")
    parser_init = inspect.getsource(GradioMultiPartParser.__init__)
    if not all(name in parser_init for name in ("_files_to_close_on_error", "self.max_files")):
        problems.append("gradio: GradioMultiPartParser no longer lists its files or max_files")
    return problems


def uvicorn_protocol_problems() -> list[str]:
    """What ``BoundedH11Protocol`` overrides or reads, changed in the installed uvicorn."""
    expected = {
        "connection_made": ["self", "transport"],
        "data_received": ["self", "data"],
        "connection_lost": ["self", "exc"],
        "on_response_complete": ["self"],
        "send_400_response": ["self", "msg"],
    }
    problems = [
        f"uvicorn: H11Protocol.{name} no longer takes ({', '.join(args)})"
        for name, args in expected.items()
        if parameters(getattr(H11Protocol, name, lambda: None)) != args
    ]
    if "self.conn = h11.Connection(" not in inspect.getsource(H11Protocol.__init__):
        problems.append("uvicorn: H11Protocol no longer makes its h11 connection as it starts")
    if "self.send_400_response(" not in inspect.getsource(H11Protocol.handle_events):
        problems.append("uvicorn: H11Protocol no longer answers h11's errors by send_400_response")
    if "self.response_started" not in inspect.getsource(RequestResponseCycle.__init__):
        problems.append("uvicorn: RequestResponseCycle has no response_started")
    if not hasattr(h11.Connection, "trailing_data"):
        problems.append("h11: Connection has no trailing_data")
    return problems


def set_queue_polling(demo: object, sleep_when_free: float, progress_sleep: float) -> None:
    """How often Gradio's queue looks for new events and for progress (no setting exists)."""
    queue = demo._queue  # type: ignore[attr-defined]
    queue.sleep_when_free = sleep_when_free
    queue.progress_update_sleep_when_free = progress_sleep


def pass_upload_path(image: Any, demo: Any, refusal: str) -> None:
    """Make a ``gr.Image`` hand its upload's path over undecoded, if the page holds that file.

    Stock ``gr.Image`` opens every upload with Pillow before our code sees
    it, so a corrupt file or a decompression bomb would fail inside Gradio,
    with no message for the user. (A subclass would do the same, but Gradio
    writes a ``.pyi`` stub beside the module of every component class it sees.)

    The path is checked here too, not only by Gradio's upload-folder check
    (``check_uploads``): a payload without ``"meta"`` is an ``ImageData``
    that Gradio never checks, and the path would reach our decoder as sent.
    """
    from gradio import Error

    held = holds(demo)

    def preprocess(payload: Any) -> str | None:
        if payload is None:
            return None
        if not held(payload.path):
            raise Error(refusal, print_exception=False)
        return payload.path

    image.preprocess = preprocess


def holds(demo: Any) -> Callable[[str], bool]:
    """Whether a path is a file this page holds: an upload it received, or one it made.

    Gradio records each upload in ``upload_file_set`` and each file a
    component moved to its cache (an example shown, a heatmap drawn) in that
    component's ``temp_files``; ``temp_file_sets`` lists them all, and
    ``delete_cache`` sweeps them.
    """
    sets = demo.temp_file_sets

    def held(path: object) -> bool:
        return isinstance(path, str) and any(path in files for files in sets)

    return held


def page_events(demo: Any) -> frozenset[int]:
    """The ids a client names the page's events by (``fn_index``): ``Blocks.fns``' keys."""
    return frozenset(demo.fns)


def check_uploads(demo: Any) -> None:
    """Switch on Gradio's own check that a payload's file is an upload, as ``launch()`` does.

    ``processing_utils._check_allowed`` returns at once unless
    ``Blocks.has_launched``, which ``launch()`` sets and ``mount_gradio_app``
    does not: every ``FileData`` path was copied into the cache as sent.
    """
    demo.has_launched = True


def cap_queue_per_client(demo: Any, limit: int, client_of: Callable[[Any], str]) -> None:
    """Refuse a page event (503) when its client already has ``limit`` events waiting.

    Gradio's queue has one ``max_size`` for everyone: one client could take
    every place. ``client_of`` tells clients apart by their request.
    """
    queue = demo._queue
    push = queue.push

    async def push_capped(body: Any, request: Any, username: str | None) -> tuple[bool, Any, str]:
        client = client_of(request)
        waiting = sum(
            1
            for events in queue.event_queue_per_concurrency_id.values()
            for event in events.queue
            if client_of(event.request) == client
        )
        if waiting >= limit:
            message = f"You have {waiting} requests waiting already: wait for them."
            return False, message, "queue_full"
        return await push(body=body, request=request, username=username)

    queue.push = push_capped


def clean_up_failed_uploads(max_files: int) -> None:
    """Gradio's upload parser: at most ``max_files`` files, and none left on disk if it fails.

    ``GradioMultiPartParser`` writes each part to a named temporary file and
    removes them only for its own errors: a body over our size limit
    (``UploadTooLargeError``, raised mid-stream) or a client that goes away
    (``ClientDisconnect``) left them on disk for good. Its upload route also
    takes 1,000 files a request; the page sends one.
    """
    from gradio.route_utils import GradioMultiPartParser

    parse = GradioMultiPartParser.parse
    if getattr(parse, "cleans_up", False):
        return

    @functools.wraps(parse)
    async def parse_cleanly(self: Any) -> Any:
        self.max_files = min(self.max_files, max_files)
        try:
            return await parse(self)
        except BaseException:
            for file in self._files_to_close_on_error:
                file.close()
                Path(file.name).unlink(missing_ok=True)
            raise

    parse_cleanly.cleans_up = True  # type: ignore[attr-defined]
    GradioMultiPartParser.parse = parse_cleanly


class HookedSignalServer(uvicorn.Server):
    """uvicorn's server, whose first SIGTERM or SIGINT calls ``on_first_signal`` instead.

    uvicorn sends signals to ``Server.handle_exit``, which records them in
    ``_captured_signals`` (raised again once the server stops, so the process
    dies by the signal) and stops serving. The first signal is not recorded
    here, so the process exits 0 once ``on_first_signal`` has it stop; a
    second one goes to uvicorn, which then stops at once.
    """

    def __init__(self, config: uvicorn.Config, on_first_signal: Callable[[int], None]) -> None:
        super().__init__(config)
        self._on_first_signal = on_first_signal
        self._signalled = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled:
            super().handle_exit(sig, frame)
            return
        self._signalled = True
        self._on_first_signal(sig)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_per_peer: int | None = None
    """Connections one address may hold open; ``None``: no cap (behind a proxy, every
    connection comes from the proxy)."""


class PeerConnections:
    """How many connections each address holds open, and whether it may open another.

    Used from the event loop's thread only, as a protocol's callbacks are.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    def open(self, peer: str) -> bool:
        """Count a new connection from ``peer``; False (and not counted) past the cap."""
        if self.limit is not None and self._open[peer] >= self.limit:
            return False
        self._open[peer] += 1
        return True

    def close(self, peer: str) -> None:
        self._open[peer] -= 1
        if self._open[peer] <= 0:
            del self._open[peer]


class FramingError(h11.RemoteProtocolError):
    """A request whose body's length could be read two ways (RFC 9112, section 6.1)."""


class StrictConnection(h11.Connection):
    """h11's connection, refusing what it reads one way and a proxy in front may read
    another (request smuggling), and keeping the protocol error that ends a connection.

    h11 takes only ``Transfer-Encoding: chunked`` (in one header; any other
    coding is 501) and equal ``Content-Length`` duplicates, but given both
    headers it frames the body by its chunks and keeps the connection open, and
    it unfolds a header continued on the next line (obsolete line folding): a
    proxy that read the length, or took the folded line for a header of its
    own, would see another request in the same bytes. Both are answered 400
    and the connection closed, as RFC 9112 allows (sections 5.2 and 6.1).
    """

    refused: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            if self.their_state is h11.IDLE:
                self._refuse_folded_headers()
            event = super().next_event()
        except h11.RemoteProtocolError as error:
            self.refused = error
            raise
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}
            if {b"transfer-encoding", b"content-length"} <= names:
                self.refused = FramingError(
                    "A request may carry Content-Length or Transfer-Encoding, not both.", 400
                )
                raise self.refused
        return event

    def _refuse_folded_headers(self) -> None:
        """The next request's head, once it is all here, must have no folded line."""
        buffered = self.trailing_data[0]
        end = HEAD_END.search(buffered)
        if end and FOLDED_LINE.search(buffered, 0, end.start()):
            raise FramingError("A header may not be folded onto the next line.", 400)


HEAD_END = re.compile(rb"\r?\n\r?\n")
"""Where a request's head ends (h11 takes bare newlines too)."""
FOLDED_LINE = re.compile(rb"\n[ \t]")
"""A line that continues the header above it."""


PROTOCOL_REFUSALS = {
    400: "The request is not valid HTTP/1.1.",
    431: "The request's headers are too large.",
    501: "The only Transfer-Encoding taken is chunked, in one header.",
}
"""What a client is told when h11 cannot read its request, by h11's status for it."""


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with the timers it lacks, 431 for oversized headers, a cap
    on connections per address, and refusals in the API's shape.

    uvicorn arms its keep-alive timer only after an answer: a connection that
    never sends a request, trickles its headers or trickles its body is held
    for good. Here a request's headers must be complete within
    ``header_timeout`` of the connection opening or of their first byte
    (between requests uvicorn's keep-alive timer closes idle connections),
    and its body within ``body_timeout`` of its headers (408); headers over
    ``max_header_bytes`` are answered 431.

    An address (the kernel's peer: where no proxy stands in front, the client)
    past ``max_per_peer`` open connections gets a 503 and its connection closed
    as soon as it opens, so that one address cannot hold every connection
    ``MAX_CONNECTIONS`` allows. A request h11 cannot read, or framed two ways
    (``StrictConnection``), is answered in the API's shape and the connection
    closed.
    """

    def __init__(
        self, *args: Any, limits: ConnectionLimits, peers: PeerConnections, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.conn = StrictConnection(h11.SERVER, limits.max_header_bytes)
        self._limits = limits
        self._peers = peers
        self._peer: str | None = None
        self._phase: object = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):  # an IP address: not a Unix socket
            if not self._peers.open(peer[0]):
                self._refuse(
                    503,
                    "Too many connections from your address: close some, then retry.",
                    {"retry-after": "1"},
                )
                return
            self._peer = peer[0]
        self._follow()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._headers_too_large(data):
            self._refuse(
                431, f"The request's headers are over {self._limits.max_header_bytes} bytes."
            )
            return
        super().data_received(data)
        self._follow()

    def _headers_too_large(self, data: bytes) -> bool:
        """Whether the request's line and headers, as received so far, pass the cap.

        h11's own cap (``h11_max_incomplete_event_size``) only counts headers
        still incomplete: 64 KiB arriving at once were taken.
        """
        limit = self._limits.max_header_bytes
        head = self.conn.trailing_data[0] + data if self.conn.trailing_data[0] else data
        end = head.find(b"\r\n\r\n", 0, limit + 4)
        return end == -1 and len(head) > limit

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._peer is not None:
            self._peers.close(self._peer)
            self._peer = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 could not read: here with h11's status for it
        (400, 431, 501) and a message for people, in the API's shape."""
        refused = self.conn.refused
        status = getattr(refused, "error_status_hint", 400)
        if isinstance(refused, FramingError):
            self._refuse(status, str(refused))
        else:
            self._refuse(status, PROTOCOL_REFUSALS.get(status, PROTOCOL_REFUSALS[400]))

    def on_response_complete(self) -> None:
        self._cancel()  # idle now: uvicorn's keep-alive timer takes over
        self._phase = None
        super().on_response_complete()

    def _follow(self) -> None:
        """(Re)arm the deadline of the request's part that is arriving, if it changed.

        Called when the connection opens and when data arrives: between
        requests nothing is armed until the next one's first byte.
        """
        phase = self.conn.their_state
        if phase is self._phase:
            return
        self._cancel()
        self._phase = phase
        timeout = {h11.IDLE: self._limits.header_timeout, h11.SEND_BODY: self._limits.body_timeout}
        if phase in timeout:
            self._deadline = self.loop.call_later(timeout[phase], self._expire)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._phase is h11.SEND_BODY and not self.cycle.response_started:
            self._refuse(408, "The request's body took too long to arrive.")
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer ``status`` in the API's error shape and close (h11's state is moot then)."""
        body = json.dumps({"error": message}).encode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = (
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"content-type: application/json\r\nconnection: close\r\n{extra}"
            f"content-length: {len(body)}\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


def bounded_protocol(limits: ConnectionLimits) -> Callable[..., asyncio.Protocol]:
    """What ``uvicorn.Config(http=...)`` takes to build each connection's protocol."""
    peers = PeerConnections(limits.max_per_peer)
    return functools.partial(BoundedH11Protocol, limits=limits, peers=peers)
