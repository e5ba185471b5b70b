"""ASGI middleware that keeps clients where they belong: the page's protocol, and every answer.

``PageGuard`` refuses at the door what the page never needs and what would
make the server read or fetch for a client: Gradio's routes the page does not
use, the file route's remote form, and a page event whose payload names a
URL or a file the page does not hold. ``SecurityHeaders`` gives every answer
the headers a public page sends. ``client_of`` says who a client is, for the
per-client cap on the page's queue.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

GRADIO_API = "/gradio_api/"
CLOSED = (
    "/gradio_api/startup-events",  # re-runs start-up: launch() calls it, the mount never does
    "/gradio_api/process_recording",  # screen recordings: the page takes photos
    "/gradio_api/proxy=",  # for apps loaded from other Spaces
)
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/")
PAYLOAD_BYTES = 64 * 1024
"""The largest page event body taken: a page event names its files, it does not carry them."""
URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:")
NOT_UPLOADED = "Upload the photo first: the page reads only files uploaded to it."
NO_URLS = "The page fetches no URL: upload the photo as a file."
DROPPED_HEADERS = {b"x-forwarded-host", b"x-gradio-server"}
"""Gradio builds its public URL from these, and caches the first caller's in
``/gradio_api/info``. Heroku's router sends neither (the URL comes from ``Host``)."""
PAGE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"content-security-policy", b"frame-ancestors 'self'"),
]


class RefusedError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class PageGuard:
    """ASGI middleware: the page's protocol reads no file it does not hold and fetches nothing.

    Gradio's own upload-folder check (switched on by
    ``internals.check_uploads``) stays behind this one, for the ``FileData``
    it reads: this one answers a clear 4xx at once, the same whether the file
    exists or not, and also sees the payloads Gradio does not check
    (``ImageData`` without ``"meta"``) and URLs, which Gradio would download.
    """

    def __init__(self, app: ASGIApp, held: Callable[[str], bool]) -> None:
        self.app = app
        self.held = held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(GRADIO_API):
            await self.app(scope, receive, send)
            return
        scope = {**scope, "headers": [h for h in scope["headers"] if h[0] not in DROPPED_HEADERS]}
        try:
            if path.startswith(CLOSED):
                raise RefusedError(404, "Not Found")
            if path.startswith(FILE_ROUTES) and URL.match(path.split("=", 1)[-1].lstrip("/")):
                raise RefusedError(400, NO_URLS)
            if scope["method"] == "POST" and is_json(scope):
                body = await read_body(scope, receive)
                self.check_payload(body)
                receive = replay(body, receive)
        except RefusedError as refusal:
            await answer(send, refusal.status, {"detail": str(refusal)})
            return
        await self.app(scope, receive, send)

    def check_payload(self, body: bytes) -> None:
        try:
            payload = json.loads(body)
        except ValueError:
            return  # Gradio answers a body that is not JSON itself
        for named in file_paths(payload):
            if not isinstance(named, str) or URL.match(named):
                raise RefusedError(400, NO_URLS)
            if not self.held(named):
                raise RefusedError(400, NOT_UPLOADED)


def is_json(scope: Scope) -> bool:
    return Headers(scope=scope).get("content-type", "").startswith("application/json")


async def read_body(scope: Scope, receive: Receive) -> bytes:
    declared = Headers(scope=scope).get("content-length", "")
    if declared.isdigit() and int(declared) > PAYLOAD_BYTES:
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
    """A ``receive`` that hands the app the body already read, then the client's own."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def file_paths(payload: Any) -> Iterator[object]:
    """Every ``path`` a payload names: Gradio's ``FileData`` and ``ImageData`` carry one."""
    if isinstance(payload, dict):
        if "path" in payload:
            yield payload["path"]
        for value in payload.values():
            yield from file_paths(value)
    elif isinstance(payload, list):
        for value in payload:
            yield from file_paths(value)


async def answer(send: Send, status: int, content: dict[str, str]) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
