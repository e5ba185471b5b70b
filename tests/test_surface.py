"""Attacks on the page's surface, by class and generated: routes and methods, URL
spellings on every file route and in every content type, JSON bombs, Range and
header abuse.

Two targets. The app as Heroku runs it (the Procfile's command, ``$DYNO`` set,
an upload folder of its own), spoken to over raw HTTP so that every spelling
reaches it as written; and the same app built in-process with a stand-in
behind ``PageGuard`` where Gradio would be, which records what reaches it, to
prove what is refused never gets there. A web server of the test's own
stands where an attacker's URL points: it must never hear a request.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from gradio_client import Client, handle_file
from starlette.routing import Mount, compile_path
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from benchmarks.common import PageClient
from classifier.assets import EXAMPLE_PHOTOS
from classifier.model import Classifier
from service.guard import (
    NO_ROUTE,
    NO_URLS,
    PAGE_ROUTES,
    PAYLOAD_BYTES,
    PAYLOAD_DEPTH,
    PageGuard,
    PageRoute,
)
from service.settings import Settings
from tests.support.harness import serving
from tests.support.photos import CAT_PHOTO, COFFEE_PHOTO

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
HELD = "/tmp/uploads/0123abcd/cat.png"
"""The one file the in-process guard holds."""
FILE_DATA = {"_type": "gradio.FileData"}

CLOSED = {
    # Gradio 6.31's routes that the page never uses, each refused in every spelling.
    # Sign-in and users: the page has no Gradio login.
    ("POST", "/login"), ("POST", "/login/"), ("GET", "/logout"),
    ("GET", "/gradio_api/user"), ("GET", "/gradio_api/user/"),
    ("GET", "/gradio_api/login_check"), ("GET", "/gradio_api/login_check/"),
    ("GET", "/gradio_api/token"), ("GET", "/gradio_api/token/"),
    ("GET", "/gradio_api/app_id"), ("GET", "/gradio_api/app_id/"),
    # Other spellings of what the page uses, and pages it does not serve.
    ("HEAD", "/"), ("GET", "/config/"), ("GET", "/gradio_api/info/"),
    ("GET", "/gradio_api/theme.css"), ("GET", "/svelte/{path:path}"),
    ("GET", "/robots.txt"), ("GET", "/pwa_icon"), ("GET", "/pwa_icon/{size}"),
    ("GET", "/openapi.json"), ("HEAD", "/openapi.json"), ("GET", "/gradio_api/openapi.json"),
    ("GET", "/gradio_api/deep_link"),
    ("GET", "/gradio_api/custom_component/{id}/{environment}/{type}/{file_name}"),
    # The file route's other spellings, and the proxy: they fetch URLs.
    ("HEAD", "/gradio_api/file={path_or_url:path}"), ("GET", "/gradio_api/file/{path:path}"),
    ("GET", "/gradio_api/proxy={url_path:path}"), ("HEAD", "/gradio_api/proxy={url_path:path}"),
    # Ways around the queue and its caps, and what the page's events never do; the run
    # and call routes but for the table's names (the page's unqueued events, and curl's
    # way to the public endpoints).
    ("POST", "/gradio_api/run/{api_name}"), ("POST", "/gradio_api/run/{api_name}/"),
    ("POST", "/gradio_api/api/{api_name}"), ("POST", "/gradio_api/api/{api_name}/"),
    ("POST", "/gradio_api/call/{api_name}"), ("POST", "/gradio_api/call/{api_name}/"),
    ("GET", "/gradio_api/call/{api_name}/{event_id}"),
    ("POST", "/gradio_api/call/v2/{api_name}"), ("POST", "/gradio_api/call/v2/{api_name}/"),
    ("GET", "/gradio_api/call/v2/{api_name}/{event_id}"),
    ("POST", "/gradio_api/cancel"), ("POST", "/gradio_api/reset"), ("POST", "/gradio_api/reset/"),
    ("GET", "/gradio_api/queue/status"),
    ("POST", "/gradio_api/component_server"), ("POST", "/gradio_api/component_server/"),
    ("POST", "/gradio_api/stream/{event_id}"), ("POST", "/gradio_api/stream/{event_id}/close"),
    ("GET", "/gradio_api/stream/{session_hash}/{run}/{component_id}/playlist.m3u8"),
    ("GET", "/gradio_api/stream/{session_hash}/{run}/{component_id}/{segment_id}.{ext}"),
    ("GET", "/gradio_api/stream/{session_hash}/{run}/{component_id}/playlist-file"),
    ("POST", "/gradio_api/process_recording"),
    # Start-up, development, monitoring, run history and AI editing: not a visitor's
    # (the run history's data routes are not even mounted: ``mount`` turns it off).
    ("GET", "/gradio_api/startup-events"), ("GET", "/gradio_api/dev/reload"),
    ("GET", "/monitoring"), ("GET", "/monitoring/summary"), ("GET", "/monitoring/{key}"),
    ("GET", "/gradio_api/runs"), ("GET", "/gradio_api/runs/"),
    ("POST", "/gradio_api/vibe-edit"), ("POST", "/gradio_api/vibe-edit/"),
    ("POST", "/gradio_api/undo-vibe-edit"), ("POST", "/gradio_api/undo-vibe-edit/"),
    ("GET", "/gradio_api/vibe-code"), ("GET", "/gradio_api/vibe-code/"),
    ("POST", "/gradio_api/vibe-code"), ("POST", "/gradio_api/vibe-code/"),
    ("POST", "/gradio_api/vibe-starter-queries"), ("POST", "/gradio_api/vibe-starter-queries/"),
}  # fmt: skip
"""Every route Gradio serves is in ``PAGE_ROUTES`` or here (some in part: the table
takes a few of their paths): a Gradio upgrade that adds one fails
``test_every_route_gradio_serves_is_classified`` until someone decides."""


def sample(template: str) -> str:
    """A path that ``template`` (a router's path, ``{name}`` its parameters) matches."""
    return re.sub(r"\{[^}]+\}", "x", template)


TEMPLATES = sorted({path for _, path in CLOSED} | {row.path for row in PAGE_ROUTES})
"""Every path Gradio routes, as its router writes it."""


# --- the two targets ------------------------------------------------------------


@dataclass
class Served:
    url: str
    log: Path

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        """``path`` sent as written (no client tidies it up); the status, headers, body."""
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            connection.putrequest(method, as_written(path), skip_accept_encoding=True)
            for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                connection.putheader(name, value.encode())
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()


def as_written(path: str) -> str:
    """``path`` with only what an HTTP request line cannot carry percent-encoded."""
    return quote(path, safe="".join(map(chr, range(0x21, 0x7F))))


@pytest.fixture(scope="module")
def served(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("surface")
    env = {"GRADIO_TEMP_DIR": str(folder / "uploads"), "DYNO": "web.1"}
    with serving(model_path, folder / "app.log", **env) as instance:
        yield Served(instance.url, instance.log)


@pytest.fixture(scope="module")
def held(served: Served) -> str:
    """A file the served page holds: a photo uploaded to it."""
    with httpx.Client(base_url=served.url) as client:
        sent = {"files": ("cat.png", CAT_PHOTO.read_bytes(), "image/png")}
        (path,) = client.post("gradio_api/upload", files=sent).json()
    return path


class StandIn:
    """Where Gradio would be: records each request that reaches it, and answers 200."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[bytes, bytes], bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.seen.append((scope["method"], scope["path"], dict(scope["headers"]), body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"reached"})


@pytest.fixture(scope="module")
def classifier(model_path: Path) -> Classifier:
    return Classifier(model_path, warm=False)


def build_app(classifier: Classifier) -> FastAPI:
    """The app as ``app.py`` builds it, Gradio's router and all, in this process."""
    from service.api import build_api
    from service.page import build_demo, mount

    return mount(build_api(classifier), build_demo(classifier, EXAMPLE_PHOTOS), Settings())


@pytest.fixture(scope="module")
def page_app(classifier: Classifier) -> FastAPI:
    return build_app(classifier)


def page_mount(api: FastAPI) -> Mount:
    return next(route for route in api.routes if isinstance(route, Mount) and route.path == "")


@pytest.fixture(scope="module")
def stand_in(classifier: Classifier) -> tuple[TestClient, StandIn]:
    """The app in-process with a ``StandIn`` behind the guard, which holds ``HELD``."""
    api = build_app(classifier)
    recorder = StandIn()
    page = page_mount(api)
    page.app = PageGuard(recorder, {HELD}.__contains__, page.app.events)
    return TestClient(api, raise_server_exceptions=False), recorder


def reached(stand_in: tuple[TestClient, StandIn], method: str, path: str, **kwargs: object) -> bool:
    client, recorder = stand_in
    before = len(recorder.seen)
    response = client.request(method, path, **kwargs)
    assert response.status_code < 500, (method, path, response.status_code, response.text)
    return len(recorder.seen) > before


def reached_as_written(stand_in: tuple[TestClient, StandIn], method: str, path: str) -> bool:
    """``reached``, for a path sent as written: decoded once, as uvicorn does, and no
    more (a client library would tidy up its dots and slashes)."""
    client, recorder = stand_in
    before = len(recorder.seen)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
    }
    statuses = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    asyncio.run(client.app(scope, receive, send))
    (status,) = statuses
    assert status < 500, (method, path, status)
    return len(recorder.seen) > before


# --- an attacker's web server -------------------------------------------------


@dataclass
class Listener:
    """A web server of the test's own, where every attacking URL points."""

    host: str
    heard: list[str]


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    heard: list[str] = []

    class Recording(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            heard.append(f"{self.command} {self.path}")
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"cat")

        do_HEAD = do_POST = do_GET  # noqa: N815 (http.server's names)

        def log_message(self, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("0.0.0.0", 0), Recording)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Listener(f"127.0.0.1:{server.server_port}", heard)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def unfetched(listener: Listener) -> Iterator[Listener]:
    """The listener, which must hear nothing while the test runs."""
    heard = len(listener.heard)
    yield listener
    assert listener.heard[heard:] == [], "the app fetched a URL"


def test_the_listener_hears_a_fetch(listener: Listener) -> None:
    """The control: a request to it is recorded, so its silence below means something."""
    assert httpx.get(f"http://{listener.host}/probe").text == "cat"
    assert listener.heard.pop() == "GET /probe"


def url_spellings(host: str) -> dict[str, str]:
    """One URL to ``host``, written every way a client or a URL parser reads as one."""
    url = f"http://{host}/cat.png"
    return {
        "http": url,
        "https upper case": f"HTTPS://{host}/cat.png",
        "mixed case": f"hTtP://{host}/cat.png",
        "ftp": f"ftp://{host}/cat.png",
        "file": f"file://{host}/etc/passwd",
        "gopher": f"gopher://{host}/_GET",
        "websocket": f"ws://{host}/cat.png",
        "scheme-relative": f"//{host}/cat.png",
        "scheme-relative backslashes": f"\\\\{host}\\cat.png",
        "backslashes": f"http:\\\\{host}\\cat.png",
        "one slash": f"http:/{host}/cat.png",
        "no slashes": f"http:{host}/cat.png",
        "blanks around": f"  {url}  ",
        "tab inside": f"ht\ttp://{host}/cat.png",
        "newline inside": f"http:/\n/{host}/cat.png",
        "NUL before": f"\x00{url}",
        "full-width": "\uff48\uff54\uff54\uff50\uff1a\uff0f\uff0f" + f"{host}/cat.png",
        "percent-encoded": quote(url, safe=""),
        "upper-case %2F": f"http:%2F%2F{host}%2Fcat.png",
        "encoded twice": quote(quote(url, safe=""), safe=""),
        "userinfo": f"http://user:pass@{host}/cat.png",
    }


SPELLINGS = sorted(url_spellings("h"))


# --- routes and methods: an allow-list ----------------------------------------


class TestRoutesAreAnAllowList:
    """Only the table's routes, with their methods, reach Gradio; every other route Gradio
    serves, with every method, and every neighbour of an allowed route, is 404 first."""

    def test_every_route_gradio_serves_is_classified(self, page_app: FastAPI) -> None:
        gradio = page_mount(page_app).app.app  # behind the guard
        served = {
            (method, context.path)
            for context in iter_route_contexts(gradio.routes)
            for method in context.methods or ()
        }
        unclassified = {
            (method, path)
            for method, path in served - CLOSED
            if not any(
                row.method == method and compile_path(path)[0].fullmatch(row.path)
                for row in PAGE_ROUTES
            )
        }
        assert unclassified == set(), "add each to PAGE_ROUTES (if the page uses it) or CLOSED"
        assert served >= CLOSED, "CLOSED names routes Gradio no longer serves"

    def test_each_row_of_the_table_is_a_route_gradio_serves(self, page_app: FastAPI) -> None:
        gradio = page_mount(page_app).app.app
        for row in PAGE_ROUTES:
            contexts = iter_route_contexts(gradio.routes)
            assert any(
                row.method in (context.methods or ())
                and compile_path(context.path)[0].fullmatch(sample(row.path))
                for context in contexts
            ), row

    @pytest.mark.parametrize("template", TEMPLATES)
    def test_only_the_tables_methods_reach_gradio(
        self, stand_in: tuple[TestClient, StandIn], template: str
    ) -> None:
        allowed = {(row.method, row.path) for row in PAGE_ROUTES}
        path = HELD_PATH.get(template, sample(template))
        for method in METHODS:
            body = {"json": {"data": []}} if method in ("POST", "PUT", "PATCH") else {}
            if (method, template) == ("POST", "/gradio_api/upload"):
                body = {"files": {"files": ("cat.png", b"png", "image/png")}}
            expected = (method, template) in allowed
            assert reached(stand_in, method, path, **body) is expected, (method, path)

    def test_the_public_endpoints_answer_through_it(self, served: Served) -> None:
        """``/predict`` and ``/predict_many``, by gradio_client and by curl's call routes."""
        client = Client(served.url, verbose=False)
        assert client.predict(handle_file(str(CAT_PHOTO)), api_name="/predict")["label"]
        photos = [handle_file(str(CAT_PHOTO)), handle_file(str(COFFEE_PHOTO))]
        gallery, _ = client.predict(photos, api_name="/predict_many")
        assert len(gallery) == len(photos)
        curl = PageClient(served.url)
        try:
            curl.classify(CAT_PHOTO)
        finally:
            curl.close()

    def test_no_websocket_reaches_gradio(self, stand_in: tuple[TestClient, StandIn]) -> None:
        client, recorder = stand_in
        before = len(recorder.seen)
        for path in ("/gradio_api/queue/join", "/gradio_api/queue/data", "/"):
            with pytest.raises(WebSocketDisconnect), client.websocket_connect(path):
                pass
        assert len(recorder.seen) == before

    @pytest.mark.parametrize("template", TEMPLATES)
    def test_every_other_method_of_a_route_is_404(self, served: Served, template: str) -> None:
        path = sample(template)
        if path == "/openapi.json":
            pytest.skip("the REST API serves its own /openapi.json, before the page")
        allowed = {row.method for row in PAGE_ROUTES if row.path == template}
        for method in sorted(set(METHODS) - allowed):
            status, _, body = served.request(method, path)
            assert status in (404, 405), (method, path, status, body[:200])
            if path.startswith("/gradio_api/") and method != "HEAD":
                assert json.loads(body) == {"detail": NO_ROUTE}

    @pytest.mark.parametrize("row", PAGE_ROUTES, ids=lambda row: f"{row.method} {row.path}")
    def test_the_neighbours_of_an_allowed_route_are_404(
        self, served: Served, stand_in: tuple[TestClient, StandIn], row: PageRoute
    ) -> None:
        for path in neighbours(row.path):
            assert not reached_as_written(stand_in, row.method, path), path
            status, _, body = served.request(row.method, path)
            assert status == 404, (path, status, body[:200])


HELD_PATH = {"/gradio_api/file={path_or_url:path}": f"/gradio_api/file={HELD}"}


def neighbours(template: str) -> set[str]:
    """Paths one slip away from ``template``'s own: its fixed part changed in case, by a
    character, a slash, a separator; for a route without parameters, a suffix too."""
    fixed, parameters = re.fullmatch(r"([^{]*)(.*)", template).groups()  # type: ignore[union-attr]
    stem = fixed.rstrip("/=")
    tail = fixed[len(stem) :]
    slips = {
        stem.upper() + tail,
        stem + "x" + tail,
        stem[:-1] + tail,
        "/" + fixed,
        fixed.replace("_", "-"),
        fixed.replace("/gradio_api/", "/gradio_api//"),
        fixed.replace("/gradio_api/", "/gradio_api/./"),
    }
    if not parameters:
        slips |= {fixed + suffix for suffix in ("/", "x", "/x", "/..", ";x", "%2F", "%00")}
    rest = sample(parameters)
    return {slip + rest for slip in slips if slip.startswith("/")} - {fixed + rest}


# --- URLs: on every file route, in every content type --------------------------


FILE_ROUTES = {
    "/gradio_api/file=": True,  # the one that serves files: each URL is refused as one
    "/gradio_api/file%3D": True,  # decoded by the server before routing: the same route
    "/gradio_api/file%3d": True,
    "/gradio_api/file/": False,  # Gradio's older spelling, closed
    "/file=": False,
    "/file/": False,
    "/gradio_api//file=": False,
    "//gradio_api/file=": False,
    "/gradio_api/./file=": False,
    "/gradio_api/x/../file=": False,
    "/gradio_api\\file=": False,
    "/gradio_api%2Ffile=": True,
    "/gradio_api%2ffile=": True,
    "/GRADIO_API/FILE=": False,
    "/gradio_api/proxy=": False,
}
"""Every spelling of the file route, and whether it reaches the route itself."""


def held_spellings(path: str) -> list[str]:
    """Other spellings of a held file's path, which Gradio would resolve to it or near it."""
    folder, name = path.rsplit("/", 1)
    return [
        "/" + path,
        path + "/",
        f"{folder}/./{name}",
        f"{folder}/x/../{name}",
        f"{folder}//{name}",
        f"{folder}\\{name}",
        f"{folder}/{name.upper()}",
        f"{folder}/{name}%00",
        f"{folder}/{name}\x00.png",
        quote(quote(path, safe=""), safe=""),  # the server decodes it once, not twice
        f"file://{path}",
        "../" * 8 + path.lstrip("/"),
    ]


class TestOnlyHeldFilesAreServed:
    """The file route serves a file the page holds as its path is written, and no other."""

    def test_a_held_file_is_served(self, served: Served, held: str) -> None:
        status, _, body = served.request("GET", f"/gradio_api/file={held}")
        assert (status, body) == (200, CAT_PHOTO.read_bytes())

    def test_another_spelling_of_it_is_refused(self, served: Served, held: str) -> None:
        for spelling in held_spellings(held):
            status, _, body = served.request("GET", f"/gradio_api/file={spelling}")
            assert status in (400, 403), (spelling, status)
            assert body != CAT_PHOTO.read_bytes()


JSON_TYPES = {
    "application/json",
    "Application/JSON",
    "APPLICATION/JSON; charset=UTF-8",
    "application/json;charset=utf-8",
    " application/json ",
}
OTHER_TYPES = {
    "",
    "application/vnd.api+json",
    "application/x+json",
    "application/json-patch+json",
    "application/jsonx",
    "text/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=b",
    "application/octet-stream",
}
EVENT_ROUTES = ("/gradio_api/queue/join", "/gradio_api/run/predict")


def placements(url: str) -> list[dict]:
    """An event body with ``url`` in each place a payload can carry a string."""
    event = {"fn_index": 0, "session_hash": "s", "trigger_id": None}
    return [
        {**event, "data": [{"path": url, "meta": FILE_DATA}]},
        {**event, "data": [{"path": url}]},
        {**event, "data": [{"url": url, "meta": FILE_DATA}]},
        {**event, "data": [url]},
        {**event, "data": [[[{"image": {"path": url}}]]]},
        {**event, "data": [None], "event_data": {"value": {"caption": url}}},
        {**event, "data": [{url: 1}]},
        {**event, "data": [], "session_hash": url},
    ]


class TestNoUrlIsFetched:
    """A URL sent any way, in any place, is refused before Gradio could fetch it."""

    @pytest.mark.parametrize("spelling", SPELLINGS)
    @pytest.mark.parametrize("route", sorted(FILE_ROUTES))
    def test_on_every_file_route(
        self, served: Served, unfetched: Listener, route: str, spelling: str
    ) -> None:
        url = url_spellings(unfetched.host)[spelling]
        for method in ("GET", "HEAD"):
            status, _, body = served.request(method, route + url)
            # A newline inside ends what the router takes for the file's name: no route.
            if FILE_ROUTES[route] and method == "GET" and "\n" not in url:
                assert (status, json.loads(body)) == (400, {"detail": NO_URLS}), url
            else:
                assert status == 404, (method, route, url, status)

    @pytest.mark.parametrize("spelling", SPELLINGS)
    def test_the_guard_takes_each_spelling_for_a_url(
        self, stand_in: tuple[TestClient, StandIn], spelling: str
    ) -> None:
        url = url_spellings("127.0.0.1:9")[spelling]
        assert not reached(stand_in, "GET", "/gradio_api/file=" + quote(url))
        for payload in placements(url):
            assert not reached(stand_in, "POST", "/gradio_api/queue/join", json=payload)

    @pytest.mark.parametrize("content_type", sorted(JSON_TYPES | OTHER_TYPES))
    @pytest.mark.parametrize("spelling", SPELLINGS)
    def test_in_every_place_of_a_payload_in_every_content_type(
        self, served: Served, unfetched: Listener, spelling: str, content_type: str
    ) -> None:
        url = url_spellings(unfetched.host)[spelling]
        expected = (400, {"detail": NO_URLS}) if content_type in JSON_TYPES else (415, None)
        for route in EVENT_ROUTES:
            for payload in placements(url):
                headers = {"Content-Type": content_type} if content_type else {}
                status, _, body = served.request(
                    "POST", route, headers, json.dumps(payload).encode()
                )
                assert status == expected[0], (route, payload, status, body[:200])
                if expected[1]:
                    assert json.loads(body) == expected[1]

    def test_a_files_own_url_is_dropped_not_followed(
        self, served: Served, held: str, unfetched: Listener, stand_in: tuple[TestClient, StandIn]
    ) -> None:
        """The page sends each file's link to itself beside its path; Gradio reads the path."""
        url = f"http://{unfetched.host}/cat.png"
        file = {"path": held, "url": url, "meta": FILE_DATA}
        status, message = run_event(served, [file], fn_index(served))
        assert (status, message["success"]) == (200, True), message
        client, recorder = stand_in
        client.post("/gradio_api/queue/join", json={"data": [{**file, "path": HELD}]})
        assert json.loads(recorder.seen[-1][3])["data"] == [{"path": HELD, "meta": FILE_DATA}]


def fn_index(served: Served, api_name: str = "predict") -> int:
    config = httpx.get(f"{served.url}config").json()
    (index,) = [d["id"] for d in config["dependencies"] if d.get("api_name") == api_name]
    return index


def run_event(served: Served, data: list, fn: int) -> tuple[int, dict]:
    """Join the queue with ``data`` for event ``fn``: the status, and its completed message."""
    session = uuid.uuid4().hex
    with httpx.Client(base_url=served.url, timeout=60) as client:
        body = {"data": data, "fn_index": fn, "session_hash": session, "trigger_id": None}
        joined = client.post("gradio_api/queue/join", json=body)
        if joined.status_code != 200:
            return joined.status_code, joined.json()
        params = {"session_hash": session}
        with client.stream("GET", "gradio_api/queue/data", params=params) as stream:
            for line in stream.iter_lines():
                message = json.loads(line.removeprefix("data:")) if line else {}
                if message.get("msg") == "process_completed":
                    return 200, message
    raise AssertionError("the event stream ended before the event completed")


# --- JSON bombs ---------------------------------------------------------------


def nested(depth: int, opening: str = "[", closing: str = "]") -> str:
    return opening * depth + "1" + closing * depth


def json_bombs() -> dict[str, bytes]:
    """Bodies that are too deep, too large, ambiguous, or hold numbers no event needs."""
    event = '{"fn_index": 0, "session_hash": "s", "data": %s}'
    bombs = {
        f"arrays {depth} deep": event % nested(depth)
        for depth in (PAYLOAD_DEPTH + 1, 100, 1000, 30_000)
    }
    bombs |= {
        f"objects {depth} deep": event % nested(depth, '{"a":', "}")
        for depth in (PAYLOAD_DEPTH + 1, 1000, 10_000)
    }
    bombs |= {
        "duplicate fn_index": '{"fn_index": 0, "fn_index": 1, "data": []}',
        "duplicate data": '{"data": [], "fn_index": 0, "data": [null]}',
        "duplicate path": event % '[{"path": "/tmp/a.png", "path": "/etc/passwd"}]',
        "duplicate key, escaped": event % '[{"path": "/tmp/a", "p\\u0061th": "/etc/passwd"}]',
        "16-digit index": '{"fn_index": 1000000000000000, "data": []}',
        "400-digit index": '{"fn_index": 1%s, "data": []}' % ("0" * 400),
        "4,000-digit index": '{"fn_index": 1%s, "data": []}' % ("0" * 4000),
        "negative huge": '{"fn_index": -100000000000000000000, "data": []}',
        "1e400": '{"fn_index": 1e400, "data": []}',
        "-1e400": '{"fn_index": -1e400, "data": []}',
        "1e300": event % "[1e300]",
        "NaN": event % "[NaN]",
        "Infinity": event % "[Infinity]",
        "-Infinity": event % "[-Infinity]",
        "not JSON": "{data: []}",
        "cut short": event % "[1, 2",
        "a list, not an object": "[]",
        "a string": '"data"',
        "empty": "",
    }
    raw = {name: body.encode() for name, body in bombs.items()}
    raw |= {
        "over the size": (event % json.dumps("a" * PAYLOAD_BYTES)).encode(),
        "UTF-16": (event % "[]").encode("utf-16"),
        "invalid UTF-8": (event % '["\xff"]').encode("latin-1"),
        "byte-order mark": b"\xef\xbb\xbf" + (event % "[]").encode(),
    }
    return raw


BOMBS = json_bombs()


class TestJsonBombs:
    """Each is answered 400 (413 for the size), never 500, on every JSON route."""

    @pytest.mark.parametrize("bomb", sorted(BOMBS))
    @pytest.mark.parametrize("route", EVENT_ROUTES)
    def test_is_a_clear_4xx(self, served: Served, route: str, bomb: str) -> None:
        status, _, body = served.request(
            "POST", route, {"Content-Type": "application/json"}, BOMBS[bomb]
        )
        assert status == (413 if bomb == "over the size" else 400), (status, body[:200])
        assert set(json.loads(body)) == {"detail"}

    @pytest.mark.parametrize("route", EVENT_ROUTES)
    def test_a_body_over_the_size_is_refused_as_it_streams(
        self, served: Served, route: str
    ) -> None:
        """Chunked, with no length declared: counted as it arrives."""
        chunks = (b"[" + b" " * 8192 for _ in range(PAYLOAD_BYTES // 8192 + 2))
        with httpx.Client(base_url=served.url, timeout=30) as client:
            response = client.post(
                route, content=chunks, headers={"Content-Type": "application/json"}
            )
        assert response.status_code == 413, response.text

    @pytest.mark.parametrize(
        "payload",
        [
            {"data": [], "fn_index": 999},
            {"data": [], "fn_index": -1},
            {"data": {"a": 1}, "fn_index": 0},
            {"data": "x", "fn_index": 0},
            {"fn_index": 0},
            {"data": [None] * 50, "fn_index": 0, "session_hash": "s"},
            {"data": [], "fn_index": 0.5},
            {"data": [], "fn_index": "0"},
        ],
        ids=str,
    )
    def test_odd_but_valid_json_is_never_a_5xx(self, served: Served, payload: dict) -> None:
        for route in EVENT_ROUTES:
            body = json.dumps(payload).encode()
            status, _, answer = served.request(
                "POST", route, {"Content-Type": "application/json"}, body
            )
            assert status < 500, (route, status, answer[:300])


# --- Range and headers --------------------------------------------------------


SIMPLE_RANGES = ["bytes=0-0", "bytes=0-99", "bytes=100-199", "bytes=0-999999999"]
"""Taken: one range with both ends, answered 206."""
OTHER_RANGES = [
    "bytes=0-1,2-3",
    "bytes=0-1, 2-3",
    ",".join(f"{n}-{n}" for n in range(500)).join(["bytes=", ""]),
    "bytes=0-",
    "bytes=-5",
    "bytes=5-1",
    "BYTES=0-1",
    "items=0-1",
    "bytes=0-99999999999999999999",
    "bytes=\u0661-\u0662",  # Arabic-Indic digits, which Python's int() reads
    "bytes=0x0-0x1",
    "bytes=",
    "bytes",
    "bytes=-",
]
"""Dropped: answered as if none were sent (200, the whole file)."""
MARKER = "m4rk3r"
ECHO_BAIT = {
    "X-Marker": MARKER,
    "Cookie": f"session={MARKER}",
    "Authorization": f"Bearer {MARKER}",
    "Origin": f"https://{MARKER}.example",
    "Referer": f"https://{MARKER}.example/",
    "User-Agent": MARKER,
    "X-Forwarded-Host": f"{MARKER}.example",
    "X-Gradio-Server": f"https://{MARKER}.example",
    "Access-Control-Request-Headers": MARKER,
    "Access-Control-Request-Method": "POST",
    "If-Range": MARKER,
    "Forwarded": f"host={MARKER}.example",
}
"""Request headers that no page route needs, each carrying the marker."""


class TestRangeAndHeaders:
    """Only one simple range reaches the file route; nothing of a request comes back."""

    @pytest.mark.parametrize("value", SIMPLE_RANGES + OTHER_RANGES)
    def test_a_range_is_one_simple_range_or_dropped(
        self, served: Served, held: str, value: str
    ) -> None:
        size = CAT_PHOTO.stat().st_size
        status, headers, body = served.request(
            "GET", f"/gradio_api/file={held}", {"Range": value, **ECHO_BAIT}
        )
        if value in SIMPLE_RANGES:
            start, end = map(int, value.removeprefix("bytes=").split("-"))
            end = min(end, size - 1)
            assert status == 206, (status, body[:200])
            assert headers["content-range"] == f"bytes {start}-{end}/{size}"
            assert body == CAT_PHOTO.read_bytes()[start : end + 1]
        else:
            assert (status, body) == (200, CAT_PHOTO.read_bytes())
        assert_nothing_echoed(headers, body)

    def test_a_range_past_the_end_is_416(self, served: Served, held: str) -> None:
        status, headers, body = served.request(
            "GET", f"/gradio_api/file={held}", {"Range": "bytes=99999999-99999999", **ECHO_BAIT}
        )
        assert status == 416, body[:200]
        assert_nothing_echoed(headers, body)

    def test_no_route_echoes_the_request(self, served: Served, held: str) -> None:
        event = {"data": [{"path": held, "meta": FILE_DATA}], "fn_index": fn_index(served)}
        requests = [
            ("GET", "/", b""),
            ("GET", "/config", b""),
            ("GET", "/theme.css", b""),
            ("GET", "/gradio_api/info", b""),
            ("GET", f"/gradio_api/file={held}", b""),
            ("GET", "/gradio_api/file=/etc/passwd", b""),
            ("GET", "/gradio_api/startup-events", b""),
            ("OPTIONS", "/gradio_api/queue/join", b""),
            ("POST", "/gradio_api/queue/join", json.dumps(event).encode()),
        ]
        for method, path, body in requests:
            headers = {**ECHO_BAIT, "Content-Type": "application/json"}
            status, answered, content = served.request(method, path, headers, body)
            assert status < 500, (path, status)
            assert_nothing_echoed(answered, content)

    @pytest.mark.parametrize("row", PAGE_ROUTES, ids=lambda row: f"{row.method} {row.path}")
    def test_gradio_sees_only_the_headers_its_route_needs(
        self, stand_in: tuple[TestClient, StandIn], row: PageRoute
    ) -> None:
        recorder = stand_in[1]
        path = HELD_PATH.get(row.path, sample(row.path))
        needed = {name.decode(): "1" for name in row.kind.headers} | {"Range": "bytes=0-1"}
        kwargs: dict = {"headers": {**ECHO_BAIT, **needed}}
        if row.kind.body == "application/json":
            kwargs["json"] = {"data": []}
            del kwargs["headers"]["content-type"], kwargs["headers"]["content-length"]
        elif row.kind.body:
            kwargs["files"] = {"files": ("cat.png", b"png", "image/png")}
            del kwargs["headers"]["content-type"], kwargs["headers"]["content-length"]
        assert reached(stand_in, row.method, path, **kwargs)
        seen = set(recorder.seen[-1][2])
        assert seen <= row.kind.headers, seen - row.kind.headers
        assert (b"range" in seen) == row.kind.serves_files


def assert_nothing_echoed(headers: dict[str, str], body: bytes) -> None:
    assert MARKER not in json.dumps(headers), headers
    assert MARKER.encode() not in body


def test_no_attack_reached_a_bug_handler(served: Served) -> None:
    """After every attack above: nothing reached the app's bug handler or uvicorn's.
    (Gradio prints a traceback for an event's own ``gr.Error``, a message for the user.)"""
    log = served.log.read_text()
    assert "Unexpected error" not in log
    assert "Exception in ASGI application" not in log
