"""``AccessGate``: with privacy on, nothing is served to a caller without credentials.

An allow-list, at the door: the gate sits right inside ``RequestContext``
(its answers carry the request id), before anything that reads a body or
a file, so every route, present and future, Gradio's included, is closed
unless ``OPEN`` names it. Callers are programs with
``Authorization: Bearer <key>`` (or ``METRICS_TOKEN``, for ``/metrics``)
and people with the login cookie. A key's scopes decide which routes it
reaches (``scope_of``). The caller's name goes on the request's log lines
and on the request counter (``metrics.CALLER``), never the key.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service import metrics
from service.access.login import LOGIN, LOGOUT, Login, login_url
from service.access.sessions import COOKIE, Sessions
from service.guard import SecurityHeaders, client_of
from service.settings import Settings

log = logging.getLogger(__name__)

OPEN = frozenset({"/healthz", "/readyz"})
"""Served to anyone: a router's and an orchestrator's health checks. (``/login`` and
``/logout`` are open too, when there are users: the gate serves them itself.)"""
METRICS_TOKEN_CALLER = "metrics-token"
PRIVATE = "This app is private: send Authorization: Bearer <key>"
UNKNOWN_KEY = "This key is not one the app accepts."


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: a key's or a user's name, and what it may reach."""

    name: str
    scopes: frozenset[str] = frozenset()
    """Empty: every scope."""

    def allows(self, scope: str) -> bool:
        return not self.scopes or scope in self.scopes


def scope_of(path: str) -> str:
    """The scope a key needs for ``path``: ``metrics``, ``feedback``, or else ``classify``
    (the REST API, the page's protocol, ``gradio_client``, MCP, the docs)."""
    if path == "/metrics":
        return "metrics"
    if path == "/feedback" or path.startswith("/feedback/"):
        return "feedback"
    return "classify"


def https_of(forwarded_hops: int) -> Callable[[Scope], bool]:
    """Whether a request came over HTTPS: its scheme, or, behind a router of ours
    (``forwarded_hops``), the ``X-Forwarded-Proto`` the router set."""

    def https(scope: Scope) -> bool:
        if scope.get("scheme") in ("https", "wss"):
            return True
        if not forwarded_hops:
            return False
        proto = Headers(scope=scope).get("x-forwarded-proto", "")
        return proto.rsplit(",", 1)[-1].strip().lower() == "https"

    return https


class AccessGate:
    """ASGI middleware: ``OPEN`` paths and the login for anyone; the rest for callers."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.credentials = settings.credentials()
        self.metrics_token = (settings.metrics_token or "").encode()
        self.sessions = None
        self.login = None
        if self.credentials.users:
            self.sessions = Sessions(
                self.credentials, settings.session_secret, settings.session_hours * 3600
            )
            login = Login(
                self.credentials,
                self.sessions,
                client_of(settings.forwarded_hops),
                https_of(settings.forwarded_hops),
            )
            self.login = SecurityHeaders(login)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in OPEN:
            await self.app(scope, receive, send)
            return
        if self.login is not None and path in (LOGIN, LOGOUT) and scope["type"] == "http":
            await self.login(scope, receive, send)
            return
        headers = Headers(scope=scope)
        caller = self.caller(headers)
        if caller is not None and caller.allows(scope_of(path)):
            token = metrics.CALLER.set(caller.name)
            try:
                await self.app(scope, receive, send)
            finally:
                metrics.CALLER.reset(token)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await SecurityHeaders(self.refusal(scope, headers, caller))(scope, receive, send)

    def caller(self, headers: Headers) -> Caller | None:
        """Who sent the request, from its bearer token or else its login cookie."""
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                return None
            if self.metrics_token and hmac.compare_digest(token.encode(), self.metrics_token):
                return Caller(METRICS_TOKEN_CALLER, frozenset({"metrics"}))
            key = self.credentials.key_for(token)
            return Caller(key.name, key.scopes) if key else None
        if self.sessions is None:
            return None
        try:
            cookie = SimpleCookie(headers.get("cookie", "")).get(COOKIE)
        except CookieError:
            return None
        user = self.sessions.user_of(cookie.value) if cookie else None
        return Caller(user.name) if user else None

    def refusal(self, scope: Scope, headers: Headers, caller: Caller | None) -> Response:
        """401 (or, for a browser opening a page, the way to the login), or 403 for a key
        whose scopes do not reach the route. The body was never read."""
        if caller is not None:
            log.info("%s may not reach %s %r", caller.name, scope["method"], scope["path"])
            return JSONResponse(
                {
                    "error": f"The key {caller.name!r} may not reach this route: it is "
                    f"limited to {'+'.join(sorted(caller.scopes))}."
                },
                status_code=403,
            )
        if "authorization" in headers:
            log.info("An unknown key was refused: %s %r", scope["method"], scope["path"])
            message, challenge = UNKNOWN_KEY, 'Bearer realm="app", error="invalid_token"'
        else:
            if self.login is not None and opens_a_page(scope, headers):
                request = Request(scope)
                wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(login_url(wanted), status_code=303)
            message = f"{PRIVATE}, or log in at {LOGIN}." if self.login else f"{PRIVATE}."
            challenge = 'Bearer realm="app"'
        return JSONResponse(
            {"error": message},
            status_code=401,
            headers={"WWW-Authenticate": challenge, "Cache-Control": "no-store"},
        )


def opens_a_page(scope: Scope, headers: Headers) -> bool:
    """A browser navigating (not a script's request): it wants HTML."""
    return scope["method"] in ("GET", "HEAD") and "text/html" in headers.get("accept", "")
