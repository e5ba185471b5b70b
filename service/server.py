"""One uvicorn server on ``$PORT`` that stops gracefully, as Heroku asks, and bounds
every connection.

Heroku sends SIGTERM and kills the dyno 30 s later. On SIGTERM the server
keeps listening but answers new requests 503 with ``Retry-After``, lets the
classifications under way finish (``DRAIN_TIMEOUT`` s at most), then closes
and exits 0. A second signal stops it at once.

Every connection has a deadline for its headers and its body, idle ones
close, headers have a size cap (431), past ``MAX_CONNECTIONS`` open
connections new requests get a quick 503 (``internals.BoundedH11Protocol``
and ``Draining``), and where no proxy stands in front one address may hold
at most ``MAX_CONNECTIONS_PER_PEER`` of them. ``/healthz`` is answered
through all of it.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from service.internals import ConnectionLimits, HookedSignalServer, bounded_protocol
from service.logs import printed_lines_logged
from service.settings import Settings

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 20.0
"""Longest wait for classifications under way: Heroku kills at 30 s."""
CLOSE_TIMEOUT = 3
"""Then, longest wait for open responses (the page's event streams) to end."""
ALWAYS_ANSWERED = {"/healthz"}


class InFlight:
    """How many classifications are under way, and a wait for there to be none."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = threading.Condition()

    def __enter__(self) -> None:
        with self._changed:
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self.count -= 1
            self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is in flight; False if ``timeout`` s pass first."""
        with self._changed:
            return self._changed.wait_for(lambda: self.count == 0, timeout)


CLASSIFYING = InFlight()
"""The page's and the API's classifications under way: draining waits for them."""


class Draining:
    """ASGI middleware: new requests get 503 once ``started`` is set, or while ``crowded()``."""

    def __init__(self, app: ASGIApp, crowded: Callable[[], bool]) -> None:
        self.app = app
        self.started = threading.Event()
        self.crowded = crowded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ALWAYS_ANSWERED:
            await self.app(scope, receive, send)
            return
        if self.started.is_set():
            message = "The server is restarting; please try again."
        elif self.crowded():
            message = "The server is busy; please try again."
        else:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"retry-after", b"1"),
                    (b"connection", b"close"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class GracefulServer:
    """uvicorn, draining on the first SIGTERM or SIGINT instead of closing at once."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.draining = Draining(app, crowded=self._crowded)
        self.max_connections = settings.max_connections
        limits = ConnectionLimits(
            settings.header_timeout,
            settings.body_timeout,
            settings.max_header_bytes,
            # Behind a router every connection is the router's: no cap per address.
            None if settings.forwarded_hops else settings.max_connections_per_peer,
        )
        config = uvicorn.Config(
            self.draining,
            host=settings.host,
            port=settings.port,
            http=bounded_protocol(limits),  # type: ignore[arg-type]
            timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type]
            h11_max_incomplete_event_size=settings.max_header_bytes,
            timeout_graceful_shutdown=CLOSE_TIMEOUT,
            log_config=None,  # the app's logging, request ids included
            access_log=False,
        )
        self.server = HookedSignalServer(config, on_first_signal=self._drain)

    def _crowded(self) -> bool:
        return len(self.server.server_state.connections) > self.max_connections

    def run(self) -> None:
        """Serve until stopped, then return; what libraries print meanwhile is logged."""
        with printed_lines_logged():
            self.server.run()

    def stop(self) -> None:
        """Stop at once (from any thread), as after a failed warm-up."""
        self.server.should_exit = True

    def _drain(self, sig: int) -> None:
        log.info("%s: draining, then stopping", signal.Signals(sig).name)
        self.draining.started.set()
        threading.Thread(target=self._exit_when_idle, daemon=True).start()

    def _exit_when_idle(self) -> None:
        if not CLASSIFYING.wait_idle(DRAIN_TIMEOUT):
            log.warning(
                "%d classifications still under way after %.0f s", CLASSIFYING.count, DRAIN_TIMEOUT
            )
        self.server.should_exit = True
