"""What reaches the page, and what every answer says.

``PageGuard`` stands between the API's router and the Gradio page mounted at
``/``: a request reaches Gradio only if ``PAGE_ROUTES`` lists its method and
path, with the body and the headers that route takes; anything else is 404
before Gradio sees it. ``SecurityHeaders`` gives every answer the headers a
public page sends. ``client_of`` says who a client is, for the per-client cap
on the page's queue.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

GRADIO_API = "/gradio_api/"
"""Gradio's own protocol: its client reads its errors' ``detail``, so they keep that shape."""
PAYLOAD_BYTES = 64 * 1024
"""The largest page event body taken: a page event names its files, it does not carry them."""
PAYLOAD_DEPTH = 16
"""The deepest nesting of an event's JSON: the page's own go 5 deep (a list of files' ``meta``)."""
NUMBER_DIGITS = 15
"""The longest number an event may carry: indices and sizes, well within a double."""
NOT_UPLOADED = "Upload the photo first: the page reads only files uploaded to it."
NOT_HELD = "The page serves only the files it holds: photos uploaded to it, its examples."
NO_URLS = "The page fetches no URL: upload the photo as a file."
NO_ROUTE = (
    "The page has no such route: its events join the queue (gradio_client does that), "
    "and the REST API is POST /classify (see /docs)."
)


JSON = "application/json"
MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class RouteKind:
    """What one kind of page route takes: its body, and the request headers Gradio may see.

    ``body`` is the one media type the route parses (``None``: it takes no
    body); every other request header is dropped, so none can steer Gradio
    (``X-Forwarded-Host`` its public URL, ``Origin`` a CORS grant) or be echoed
    back (the file route copied a ranged request's headers into its answer).
    """

    body: str | None
    headers: frozenset[bytes]
    serves_files: bool = False


EVERY_ROUTE = frozenset({b"host", b"x-forwarded-proto", b"accept-encoding"})
"""The URLs Gradio writes into its answers come from the first two; its compression from
the third."""
CACHING = frozenset({b"if-none-match", b"if-modified-since"})
BODY = frozenset({b"content-type", b"content-length"})
STATIC = RouteKind(None, EVERY_ROUTE | CACHING)
"""The page and what it loads: HTML, scripts, styles, fonts, its config."""
FILE = RouteKind(None, EVERY_ROUTE | CACHING | {b"range"}, serves_files=True)
"""A file the page holds (an upload, an example, a heatmap), served back to show it."""
STREAM = RouteKind(None, EVERY_ROUTE)
"""Server-sent events: an event's progress and result, an upload's progress, a heartbeat."""
EVENT = RouteKind(JSON, EVERY_ROUTE | BODY | {b"x-forwarded-for", b"x-request-id"})
"""A page event: ``X-Forwarded-For`` tells clients apart for the queue's cap, and
``X-Request-ID`` goes on the event's log lines."""
UPLOAD = RouteKind(MULTIPART, EVERY_ROUTE | BODY)
"""A photo's bytes, stored for an event to name (Gradio's parser: one form, its files)."""


@dataclass(frozen=True)
class PageRoute:
    """One route the page uses: a method and Gradio's own path template for it."""

    method: str
    path: str
    kind: RouteKind


PAGE_ROUTES = (
    PageRoute("GET", "/", STATIC),  # the page itself, its config inlined
    PageRoute("GET", "/assets/{path:path}", STATIC),  # its scripts and styles
    PageRoute("GET", "/static/{path:path}", STATIC),  # its fonts and the iframe resizer
    PageRoute("GET", "/theme.css", STATIC),  # its theme
    PageRoute("GET", "/favicon.ico", STATIC),  # the tab's icon, which every browser asks for
    PageRoute("GET", "/manifest.json", STATIC),  # linked from the page's head
    PageRoute("GET", "/config", STATIC),  # gradio_client: the page's endpoints
    PageRoute("GET", "/gradio_api/info", STATIC),  # gradio_client, "Use via API": their inputs
    PageRoute("POST", "/gradio_api/upload", UPLOAD),  # a photo chosen, pasted or taken
    PageRoute("GET", "/gradio_api/upload_progress", STREAM),  # that upload's progress
    PageRoute("POST", "/gradio_api/queue/join", EVENT),  # every event that runs Python
    PageRoute("GET", "/gradio_api/queue/data", STREAM),  # the queued events' results
    PageRoute("GET", "/gradio_api/heartbeat/{session_hash}", STREAM),  # a tab's state kept
    PageRoute("POST", "/gradio_api/run/predict", EVENT),  # unqueued: an example's pick, a clear
    PageRoute("POST", "/gradio_api/call/predict", EVENT),  # curl, as "Use via API" shows
    PageRoute("GET", "/gradio_api/call/predict/{event_id}", STREAM),  # ... and its result
    PageRoute("POST", "/gradio_api/call/predict_many", EVENT),  # the same for several photos
    PageRoute("GET", "/gradio_api/call/predict_many/{event_id}", STREAM),
    PageRoute("GET", "/gradio_api/file={path_or_url:path}", FILE),  # photos, examples, heatmaps
)
"""The page's routes, found with a real browser, ``gradio_client`` and the page's "Use
via API" on Gradio 6.31 (docs/design/serving.md says how, and how to add one): the only
requests Gradio sees. The public endpoints are ``/predict`` and ``/predict_many``.
A new page event needs no row (events are named in the body); a new Gradio route
that the page starts using needs one."""
ANSWER_HEADERS = frozenset(
    {
        b"content-type",
        b"content-length",
        b"content-encoding",
        b"content-disposition",
        b"content-range",
        b"accept-ranges",
        b"cache-control",
        b"etag",
        b"last-modified",
        b"vary",
        b"retry-after",
    }
)
"""What Gradio's answers may carry: nothing of the request comes back in them."""
SIMPLE_RANGE = re.compile(rb"bytes=(\d{1,15})-(\d{1,15})")
SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:[/\\]|(?:https?|ftp|wss?|file):|[/\\]{2}")
"""The start of a URL that names a host: ``scheme:/``, ``scheme:\\``, ``//host``, or a
scheme that URL parsers give a host even without slashes (``http:host``)."""
PLAIN = re.compile(r"[ -$&-9;-\[\]-~]*")
"""Printable ASCII but ``:``, ``%`` and ``\\``: no URL parser makes a URL's scheme of it."""
URL_NOISE = re.compile(r"[\t\n\r]")
"""What URL parsers drop anywhere in a URL (WHATWG), so ``ht<TAB>tp://`` is ``http://``."""


class RefusedError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CompiledRoute:
    route: PageRoute
    pattern: re.Pattern[str]


COMPILED = [CompiledRoute(route, compile_path(route.path)[0]) for route in PAGE_ROUTES]
"""Compiled as Gradio's router compiles them, so both read a path the same way."""


def page_route(method: str, path: str) -> tuple[PageRoute, dict[str, str]] | None:
    """The table's row for this request and its path parameters, if it has one."""
    for compiled in COMPILED:
        match = compiled.pattern.match(path)
        if match and compiled.route.method == method:
            return compiled.route, match.groupdict()
    return None


class PageGuard:
    """ASGI app around the page: only ``PAGE_ROUTES`` reach it, as each route expects.

    For each request: its row in the table, or 404; its body parsed as that
    route takes it (an event's JSON bounded, naming one of the page's
    ``events``, every URL in it refused, every file it names one the page
    holds) and handed on as parsed; the file route
    serves held files only; every request header the route does not need
    dropped, and every answer header but ``ANSWER_HEADERS``. Gradio's own
    upload-folder check (``internals.check_uploads``) stays behind this one.

    Refusals under ``GRADIO_API`` keep Gradio's error shape; any other path
    is the API's to answer (404, or 405 where the API has that path).
    """

    def __init__(self, app: ASGIApp, held: Callable[[str], bool], events: Collection[int]) -> None:
        self.app = app
        self.held = held
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await WebSocketClose()(scope, receive, send)  # the page uses none
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        try:
            found = page_route(scope["method"], path)
            if found is None:
                raise RefusedError(404, NO_ROUTE)
            route, parameters = found
            headers = allowed_headers(scope["headers"], route.kind)
            if route.kind.serves_files:
                self.check_file(next(iter(parameters.values())))
            if route.kind.body == JSON:
                body = await self.event_body(scope, receive)
                headers = [*without_body(headers), *json_headers(body)]
                receive = replay(body, receive)
            elif route.kind.body is None:
                refuse_body(scope)
            else:
                require_type(scope, route.kind.body)
        except RefusedError as refusal:
            if not path.startswith(GRADIO_API):
                raise HTTPException(refusal.status) from refusal
            await answer(send, refusal.status, {"detail": str(refusal)})
            return
        await self.app({**scope, "headers": headers}, receive, answers_only(send))

    def check_file(self, named: str) -> None:
        if is_url(named):
            raise RefusedError(400, NO_URLS)
        if not self.held(named):
            raise RefusedError(403, NOT_HELD)

    async def event_body(self, scope: Scope, receive: Receive) -> bytes:
        """The event's JSON, read, checked and written anew: what Gradio parses is what was
        checked here, whatever its parser makes of duplicate keys or odd spellings."""
        require_type(scope, JSON)
        payload = parse_json(await read_body(scope, receive))
        if not isinstance(payload, dict):
            raise RefusedError(400, "A page event is a JSON object.")
        event = payload.get("fn_index")
        if event is not None and (type(event) is not int or event not in self.events):
            raise RefusedError(400, "The page has no such event.")
        return json.dumps(self.checked(payload, depth=0)).encode()

    def checked(self, value: Any, depth: int) -> Any:
        """``value`` with no URL, no file the page does not hold, and no file's ``url``.

        A file (``FileData``, ``ImageData``: a dict with a ``path``) names a
        file the page holds; its ``url`` is the page's own link to it, which
        Gradio never reads for an input and is dropped here.
        """
        if depth > PAYLOAD_DEPTH:
            raise RefusedError(400, f"A page event's JSON is nested over {PAYLOAD_DEPTH} deep.")
        if isinstance(value, str):
            if is_url(value):
                raise RefusedError(400, NO_URLS)
            return value
        if isinstance(value, list):
            return [self.checked(item, depth + 1) for item in value]
        if not isinstance(value, dict):
            return value
        if "path" in value:
            named = value["path"]
            if not isinstance(named, str) or is_url(named):
                raise RefusedError(400, NO_URLS)
            if not self.held(named):
                raise RefusedError(400, NOT_UPLOADED)
            value = {key: item for key, item in value.items() if key != "url"}
        return {
            self.checked(key, depth + 1): self.checked(item, depth + 1)
            for key, item in value.items()
        }


def is_url(text: str) -> bool:
    """Whether ``text`` names a host in any spelling a client or a URL parser accepts:
    any scheme in any case, ``//host``, backslashes, percent-encoded (even twice),
    full-width, with blanks around or tabs and newlines inside."""
    if PLAIN.fullmatch(text) and not text.lstrip(" ").startswith("//"):
        return False  # most strings of an event: printable ASCII with no colon, % or \\
    for _ in range(4):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    text = URL_NOISE.sub("", unicodedata.normalize("NFKC", text)).strip("\x00 \x0b\x0c")
    return SCHEME.match(text.lower()) is not None


def allowed_headers(headers: list[tuple[bytes, bytes]], kind: RouteKind) -> list:
    """The request's headers that ``kind`` takes; ``Range`` only as one simple range."""
    return [
        (name, value)
        for name, value in headers
        if name in kind.headers and (name != b"range" or simple_range(value))
    ]


def simple_range(value: bytes) -> bool:
    match = SIMPLE_RANGE.fullmatch(value)
    return match is not None and int(match[1]) <= int(match[2])


def media_type(scope: Scope) -> str:
    """The request's ``Content-Type`` without its parameters, in lower case."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.decode("latin-1").split(";", 1)[0].strip().lower()
    return ""


def require_type(scope: Scope, expected: str) -> None:
    if media_type(scope) != expected:
        raise RefusedError(415, f"This route takes {expected} only.")


def declared_length(scope: Scope) -> int | None:
    """The body's declared length; ``None`` if it is chunked (HTTP framing was checked
    by the server: a request has one or the other)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def refuse_body(scope: Scope) -> None:
    declared = declared_length(scope)
    chunked = any(name == b"transfer-encoding" for name, _ in scope["headers"])
    if (declared or 0) > 0 or chunked:
        raise RefusedError(400, "This route takes no body.")


def without_body(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name not in BODY]


def json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


def parse_json(body: bytes) -> Any:
    """``body`` as strict JSON: UTF-8, no duplicate keys, no ``NaN``, no number over
    ``NUMBER_DIGITS`` digits; anything else a 400 with what is wrong."""
    try:
        return json.loads(
            body.decode("utf-8"),
            object_pairs_hook=unique_keys,
            parse_int=bounded_int,
            parse_float=bounded_float,
            parse_constant=no_constant,
        )
    except RecursionError as error:
        raise RefusedError(400, "A page event's JSON is nested too deep.") from error
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError included
        raise RefusedError(400, "A page event's body is not valid JSON.") from error


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise RefusedError(400, "A page event's JSON repeats a key.")
    return value


def bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > NUMBER_DIGITS:
        raise RefusedError(400, f"A page event's number is over {NUMBER_DIGITS} digits.")
    return int(text)


def bounded_float(text: str) -> float:
    number = float(text)
    if len(text) > 2 * NUMBER_DIGITS or not math.isfinite(number) or abs(number) > 2**53:
        raise RefusedError(400, "A page event's number is out of range.")
    return number


def no_constant(text: str) -> float:
    raise RefusedError(400, f"A page event's JSON holds {text}, which is not a number.")


async def read_body(scope: Scope, receive: Receive) -> bytes:
    declared = declared_length(scope)
    if declared is not None and declared > PAYLOAD_BYTES:
        raise RefusedError(413, f"A page event's body is over {PAYLOAD_BYTES} bytes.")
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RefusedError(400, "The client went away.")
        body += message.get("body", b"")
        if len(body) > PAYLOAD_BYTES:
            raise RefusedError(413, f"A page event's body is over {PAYLOAD_BYTES} bytes.")
        if not message.get("more_body", False):
            return body


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app ``body``, then the client's own messages."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def answers_only(send: Send) -> Send:
    """A ``send`` that passes Gradio's answers on with ``ANSWER_HEADERS`` only."""

    async def filtered(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers", [])
            message = {**message, "headers": [h for h in headers if h[0].lower() in ANSWER_HEADERS]}
        await send(message)

    return filtered


async def answer(send: Send, status: int, content: dict[str, str]) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


PAGE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"content-security-policy", b"frame-ancestors 'self'"),
]


class SecurityHeaders:
    """ASGI middleware: every answer says nosniff, a referrer policy and who may frame it.

    ``nosniff`` matters most for the uploads Gradio serves back
    (``/gradio_api/file=``): a browser never runs one as a page. The
    content security policy only restricts framing: Gradio's page needs its
    inline scripts and styles.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *(header for header in PAGE_HEADERS if header[0] not in present),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def client_of(forwarded_hops: int) -> Callable[[Request], str]:
    """Who sent a request: the ``X-Forwarded-For`` entry ``forwarded_hops`` from the end.

    Each proxy appends the address that connected to it, so only entries
    added by proxies of ours can be trusted: behind Heroku's router
    (``forwarded_hops=1``) the last one, which the router appended; entries
    before it are whatever the client sent. With no proxy (``0``), the
    connection's peer.
    """

    def client(request: Request) -> str:
        peer = request.client.host if request.client else "-"
        if not forwarded_hops:
            return peer
        entries = [e.strip() for e in request.headers.get("x-forwarded-for", "").split(",")]
        return entries[-forwarded_hops] if len(entries) >= forwarded_hops else peer

    return client
