"""The login form at ``/login`` and ``/logout``: small, plain, served by the gate itself.

Ours rather than Gradio's (``auth=``), whose tokens live in one process: a
login made on one dyno would be refused by the next behind Heroku's router.
Failed logins are throttled per client (429 with ``Retry-After``), and
password checks run one at a time, each in a worker thread: scrypt takes
32 MiB and a tenth of a second of a core, and a dyno has 512 MB and 2 cores.
"""

from __future__ import annotations

import html
import logging
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import parse_qs, urlencode

import anyio
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from service.access.credentials import Credentials
from service.access.sessions import COOKIE, Sessions

log = logging.getLogger(__name__)

LOGIN = "/login"
LOGOUT = "/logout"
FORM_BYTES = 4096
"""The largest login form read: a name, a password and where to go next."""
FAILURES, WINDOW_S = 5, 300
"""Failed logins a client may make in a window of this many seconds; then it waits."""
CLIENTS = 10_000
"""Clients whose failures are remembered at once; the oldest are forgotten first."""
PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
"""The form runs no script and loads nothing: nothing injected into it could."""
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in</title>
<style>
body {{ font: 16px system-ui, sans-serif; display: grid; place-items: center;
  min-height: 90vh; margin: 0 1em; color: #1f2937; }}
form {{ display: grid; gap: .6em; width: min(20em, 100%); }}
input, button {{ font: inherit; padding: .5em; border: 1px solid #9ca3af; border-radius: 6px; }}
button {{ background: #ea580c; color: white; border: 0; cursor: pointer; }}
p.problem {{ color: #b91c1c; margin: 0; }}
</style></head>
<body><form method="post" action="{login}">
<h1>Log in</h1>
{problem}
<label for="username">Name</label>
<input id="username" name="username" value="{name}" autocomplete="username" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<input type="hidden" name="next" value="{next}">
<button type="submit">Log in</button>
</form></body></html>
"""


class Throttle:
    """Failed logins per client: past ``FAILURES`` in ``WINDOW_S``, the client waits."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.failures: dict[str, deque[float]] = {}

    def wait_s(self, client: str) -> int:
        """Seconds until ``client`` may try again (0: now)."""
        recent = self.failures.get(client)
        if recent is None:
            return 0
        while recent and recent[0] <= self.clock() - WINDOW_S:
            recent.popleft()
        if not recent:
            del self.failures[client]
            return 0
        return int(recent[0] + WINDOW_S - self.clock()) + 1 if len(recent) >= FAILURES else 0

    def failed(self, client: str) -> None:
        self.failures.setdefault(client, deque(maxlen=FAILURES)).append(self.clock())
        if len(self.failures) > CLIENTS:
            del self.failures[next(iter(self.failures))]


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of this site, never another site's address."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith(("//", "/\\", LOGIN, LOGOUT))
        or any(ord(c) < 0x20 or c == "\\" for c in target)
    ):
        return "/"
    return target


def login_url(next_path: str) -> str:
    return f"{LOGIN}?{urlencode({'next': next_path})}" if next_path != "/" else LOGIN


def page(
    next_path: str, problem: str = "", status: int = 200, name: str = "", **headers: str
) -> Response:
    """The form; after a failed login, with what went wrong and the name given."""
    body = PAGE.format(
        login=html.escape(LOGIN),
        name=html.escape(name[:64]),
        next=html.escape(next_path),
        problem=f'<p class="problem" role="alert">{html.escape(problem)}</p>' if problem else "",
    )
    response = HTMLResponse(body, status_code=status, headers=headers)
    response.headers["content-security-policy"] = PAGE_POLICY
    response.headers["cache-control"] = "no-store"
    return response


class Login:
    """Serves ``/login`` (the form, and its post) and ``/logout``."""

    def __init__(
        self,
        credentials: Credentials,
        sessions: Sessions,
        client: Callable[[Request], str],
        https: Callable[[Scope], bool],
    ) -> None:
        self.credentials = credentials
        self.sessions = sessions
        self.client = client
        self.https = https
        self.throttle = Throttle()
        self.one_at_a_time = anyio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.answer(Request(scope, receive))
        await response(scope, receive, send)

    async def answer(self, request: Request) -> Response:
        if request.url.path == LOGOUT:
            response: Response = RedirectResponse(LOGIN, status_code=303)
            response.delete_cookie(COOKIE, path="/", secure=self.https(request.scope))
            return response
        next_path = safe_next(request.query_params.get("next"))
        if request.method in ("GET", "HEAD"):
            return page(next_path)
        if request.method != "POST":
            return Response(status_code=405, headers={"Allow": "GET, HEAD, POST"})
        client = self.client(request)
        if wait := self.throttle.wait_s(client):
            log.info("Login refused to %r: too many failures", client)
            return page(
                next_path,
                f"Too many failed logins: try again in {wait} s.",
                429,
                **{"Retry-After": str(wait)},
            )
        form = await read_form(request)
        if form is None:
            return page(next_path, "The form could not be read: please try again.", 400)
        next_path = safe_next(form.get("next"))
        name, password = form.get("username", ""), form.get("password", "")
        async with self.one_at_a_time:
            user = await anyio.to_thread.run_sync(self.credentials.user_for, name, password)
        if user is None:
            self.throttle.failed(client)
            # An unknown name is not logged: it may be a password typed in the wrong box.
            known = name if name in self.credentials.users else "an unknown name"
            log.info("Failed login as %r from %r", known, client)
            return page(next_path, "Wrong name or password.", 401, name=name)
        log.info("%s logged in", user.name)
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(
            COOKIE,
            self.sessions.issue(user),
            max_age=self.sessions.lifetime_s,
            path="/",
            secure=self.https(request.scope),
            httponly=True,
            samesite="lax",
        )
        return response


async def read_form(request: Request) -> dict[str, str] | None:
    """The posted form's fields, or None if it is not a small URL-encoded form."""
    headers = Headers(scope=request.scope)
    if headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=8, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {name: values[0] for name, values in fields.items()}
