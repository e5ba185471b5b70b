"""Every request's id: taken from Heroku's router, answered back, on every log line.

Heroku's router gives each request an ``X-Request-ID`` (and logs it); where
it is absent, a new one is made. The id is echoed as a response header, is
on every log line written while the request is handled (threads it hands
work to included: they copy its context), and is the one thing an
unexpected failure tells the client, so its log lines can be found.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping
from contextvars import ContextVar

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics

log = logging.getLogger(__name__)

HEADER = "X-Request-ID"
LOG_FORMAT = "%(levelname)s %(name)s [%(request_id)s%(caller)s]: %(message)s"
"""``caller``: in a private app, the key's or user's name after the id (``[<id> ci]``)."""
_ACCEPTED = re.compile(r"[A-Za-z0-9._:-]{1,200}")
"""A router's id as it may appear in a log line (Heroku's are UUIDs): no spaces, no newlines."""

current: ContextVar[str] = ContextVar("request_id", default="-")


def request_id_from(header: str | None) -> str:
    """The router's id when it is a sane one, else a new one."""
    if header and _ACCEPTED.fullmatch(header):
        return header
    return uuid.uuid4().hex


def adopt(headers: Mapping[str, str]) -> None:
    """Take the request's id from its headers for this context: a page event, which
    Gradio runs outside the request that carried it."""
    current.set(request_id_from(headers.get(HEADER)))


def internal_error_message() -> str:
    return f"Internal error (request {current.get()})."


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on each record, as ``%(request_id)s``, and the
    caller's name, if any, as ``%(caller)s``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current.get()
        caller = metrics.CALLER.get()
        record.caller = f" {caller}" if caller else ""
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """One format for the app's, uvicorn's and Gradio's log lines, with the request id."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # libvips' own progress ("VIPS: thumbnailing source", ...), relayed by pyvips at
    # INFO: several lines for every large decode, none of them news to an operator.
    logging.getLogger("pyvips").setLevel(logging.WARNING)


class RequestContext:
    """ASGI middleware: gives each request its id, and answers its unexpected failures.

    An exception that no handler answered is logged with its traceback and the
    request id, counted in ``/metrics``, and answered 500 with the id (unless the
    response had begun: then the connection is closed, as it must be). A client
    that went away mid-request (or was cut off, past a deadline) is no bug: one
    line, and nothing to answer.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = request_id_from(headers.get(HEADER.lower().encode(), b"").decode("latin-1"))
        token = current.set(request_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (HEADER.lower().encode(), request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            log.info("The client went away during %s %s", scope["method"], scope["path"])
        except Exception:
            log.exception("Unexpected error answering %s %s", scope["method"], scope["path"])
            metrics.UNEXPECTED_ERRORS.inc()
            if started:
                raise
            body = json.dumps({"error": internal_error_message()}).encode()
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send_with_id({"type": "http.response.body", "body": body})
        finally:
            current.reset(token)
