"""Attacks on the app as Heroku runs it: each is refused, quickly, with nothing read,
fetched or left behind, and the app still answers afterwards.

One instance of its own (the Procfile's command, with ``$DYNO`` set as on a
dyno, so clients are told apart by the router's ``X-Forwarded-For``), with an
upload folder of its own (``GRADIO_TEMP_DIR``), so that "nothing left behind"
is an exact listing of that folder and no other test's uploads mix in.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from gradio_client import Client, handle_file

from classifier.assets import ROOT
from classifier.options import MB
from service.page import PAGE_SESSIONS, UPLOAD_FILES
from service.settings import Settings
from tests.support.harness import Instance, classify, serving, wait_for
from tests.support.photos import CAT_PHOTO
from tests.support.sockets import closed_within

DEFAULTS = Settings()
DEADLINES = {"HEADER_TIMEOUT": "2", "KEEP_ALIVE_TIMEOUT": "2", "BODY_TIMEOUT": "4"}
"""The served instance's connection deadlines: shorter than the defaults, so that
waiting them out takes seconds; the mechanism is the same."""
LIMITS = Settings(**{name.lower(): float(value) for name, value in DEADLINES.items()})
QUICK_S = 1.0
"""A refusal takes no longer than this."""
SECRET_FILES = ["/etc/passwd", "/proc/self/environ"]
SERVER_IMAGE = str(ROOT / "examples" / "chelsea.png")
"""An image on the server's disk that no client uploaded."""


@dataclass
class Served:
    instance: Instance
    uploads: Path

    @property
    def url(self) -> str:
        return self.instance.url

    def files(self) -> set[Path]:
        return {path for path in self.uploads.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def served(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("security")
    uploads = folder / "uploads"
    env = {"GRADIO_TEMP_DIR": str(uploads), "DYNO": "web.1", **DEADLINES}
    with serving(model_path, folder / "app.log", **env) as instance:
        yield Served(instance, uploads)


@pytest.fixture(scope="module")
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        yield client


def address(served: Served) -> tuple[str, int]:
    parts = urlsplit(served.url)
    return parts.hostname or "127.0.0.1", parts.port or 80


# --- the page's protocol, as an attacker speaks it ----------------------------


def config(http: httpx.Client) -> dict:
    return http.get("config").json()


def fn_index(http: httpx.Client, api_name: str = "predict") -> int:
    (index,) = [d["id"] for d in config(http)["dependencies"] if d.get("api_name") == api_name]
    return index


def run_event(
    http: httpx.Client, data: list, fn: int, client: str = "203.0.113.1"
) -> tuple[int, dict | str]:
    """Join the queue with ``data`` for event ``fn``; its status and its completed message."""
    session = uuid.uuid4().hex
    headers = {"X-Forwarded-For": client}
    joined = http.post(
        "gradio_api/queue/join",
        json={"data": data, "fn_index": fn, "session_hash": session, "trigger_id": None},
        headers=headers,
    )
    if joined.status_code != 200:
        return joined.status_code, joined.text
    with http.stream(
        "GET", "gradio_api/queue/data", params={"session_hash": session}, headers=headers
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line.removeprefix("data:"))
                if message.get("msg") == "process_completed":
                    return 200, message
    raise AssertionError("the event stream ended before the event completed")


def file_data(path: str, meta: bool) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}} if meta else {"path": path}


def upload(http: httpx.Client, name: str, content: bytes, content_type: str) -> httpx.Response:
    return http.post("gradio_api/upload", files={"files": (name, content, content_type)})


def refused_event(http: httpx.Client, payload: dict) -> str:
    """``payload`` sent as the photo to ``/predict`` through the queue: the refusal's text.

    Refused at the door (a 4xx to the join) or by the event (it fails): never a result.
    """
    start = time.perf_counter()
    status, message = run_event(http, [payload], fn_index(http))
    assert time.perf_counter() - start < 10  # through the queue, but no decode, no fetch
    if status == 200:
        assert message["success"] is False, message
        return json.dumps(message["output"])
    assert 400 <= status < 500, (status, message)
    return str(message)


# --- reading files the client names -------------------------------------------


def test_api_info_is_not_poisoned_by_forwarded_host(http: httpx.Client) -> None:
    """First on the instance: ``/gradio_api/info`` caches what its first caller's headers say."""
    poisoned = http.get("gradio_api/info", headers={"X-Forwarded-Host": "attacker.example"})
    assert "attacker.example" not in poisoned.text
    assert "attacker.example" not in http.get("gradio_api/info").text


def test_the_direct_run_route_is_closed(http: httpx.Client) -> None:
    """The queue is the only way in: ``/gradio_api/run/...`` would skip it and its caps."""
    for path in ("gradio_api/run/predict", "gradio_api/api/predict"):
        start = time.perf_counter()
        response = http.post(path, json={"data": [None]})
        assert time.perf_counter() - start < QUICK_S
        assert response.status_code == 404, (path, response.status_code, response.text)
        assert "join the queue" in response.text


@pytest.mark.parametrize("meta", [True, False], ids=["FileData", "no meta"])
@pytest.mark.parametrize("path", SECRET_FILES)
def test_a_server_file_named_in_a_payload_is_neither_read_nor_copied(
    http: httpx.Client, served: Served, path: str, meta: bool
) -> None:
    before = served.files()
    said = refused_event(http, file_data(path, meta))
    assert "root:" not in said
    assert "PATH=" not in said
    assert not any(file.name in ("passwd", "environ") for file in served.files() - before)


def test_the_copy_then_file_route_exploit_reads_nothing(http: httpx.Client, served: Served) -> None:
    """The issue's exploit: the payload copies the file into the cache, ``/file=`` serves it."""
    refused_event(http, file_data("/proc/self/environ", meta=True))
    for copied in [f for f in served.files() if f.name == "environ"] or [Path("/x/environ")]:
        response = http.get(f"gradio_api/file={copied}")
        assert response.status_code == 403, response.text
        assert "PATH=" not in response.text


def test_an_image_on_the_server_is_not_classified(http: httpx.Client) -> None:
    """Without ``meta`` the path skipped Gradio's check: any image on the server was classified."""
    for meta in (True, False):
        said = refused_event(http, file_data(SERVER_IMAGE, meta))
        assert "confidences" not in said


def test_the_refusal_is_the_same_whether_the_file_exists_or_not(http: httpx.Client) -> None:
    """No existence oracle: one message for a file that is there, one that is not, a folder."""
    for meta in (True, False):
        answers = {
            path: refused_event(http, file_data(path, meta))
            for path in ("/etc/passwd", "/etc/no-such-file", "/etc", "/proc/self/environ")
        }
        assert len(set(answers.values())) == 1, answers


def test_no_event_of_the_page_reads_a_named_file(http: httpx.Client, served: Served) -> None:
    """Private events too, called by ``fn_index``: each gets server paths for every input."""
    before = served.files()
    for dependency in config(http)["dependencies"]:
        for meta in (True, False):
            data = [file_data("/etc/passwd", meta)] * len(dependency["inputs"])
            _, message = run_event(http, data, dependency["id"])
            assert "root:" not in json.dumps(message)
    assert not any(file.name == "passwd" for file in served.files() - before)


@pytest.mark.parametrize(
    "path",
    [
        "gradio_api/file=/etc/passwd",
        "gradio_api/file=../../../../../../etc/passwd",
        "gradio_api/file=%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "gradio_api/file=/proc/self/environ",
        "gradio_api/file/etc/passwd",
        "gradio_api/file={uploads}/../../../../etc/passwd",
        "static/../../../../etc/passwd",
        "assets/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "gradio_api/file={root}/app.py",
    ],
)
def test_traversal_reads_nothing(http: httpx.Client, served: Served, path: str) -> None:
    target = path.format(uploads=served.uploads, root=ROOT)
    start = time.perf_counter()
    response = http.get(target)
    assert time.perf_counter() - start < QUICK_S
    assert response.status_code in (400, 403, 404), (target, response.status_code)
    assert "root:" not in response.text
    assert "PATH=" not in response.text
    assert "def main" not in response.text


# --- fetching URLs a client sends ---------------------------------------------


@pytest.fixture
def listener() -> Iterator[tuple[str, list]]:
    """A local port that records every connection made to it (none must be)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    connections: list = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connections.append(server.accept())
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", connections
    stop.set()
    thread.join()
    server.close()


def test_the_file_route_fetches_no_url(http: httpx.Client, listener: tuple[str, list]) -> None:
    url, connections = listener
    for path in (f"gradio_api/file={url}/cat.png", f"gradio_api/file={quote(url)}/cat.png"):
        start = time.perf_counter()
        response = http.get(path)
        assert time.perf_counter() - start < QUICK_S
        assert response.status_code == 400, response.text
        assert "URL" in response.text
    assert connections == []


@pytest.mark.parametrize("scheme", ["http", "HTTPS", "ftp", "file"])
def test_a_url_in_a_payload_is_refused_unfetched(
    http: httpx.Client, listener: tuple[str, list], scheme: str
) -> None:
    url, connections = listener
    target = url.replace("http", scheme, 1) + "/cat.png"
    for meta in (True, False):
        start = time.perf_counter()
        response = http.post(
            "gradio_api/queue/join",
            json={
                "data": [file_data(target, meta)],
                "fn_index": fn_index(http),
                "session_hash": uuid.uuid4().hex,
            },
        )
        assert time.perf_counter() - start < QUICK_S
        assert response.status_code == 400, response.text
        assert "URL" in response.text
    assert connections == []


# --- what the browser is told -------------------------------------------------


def test_cross_origin_callers_get_no_cors_grant(http: httpx.Client) -> None:
    evil = "https://attacker.example"
    preflight = http.options(
        "gradio_api/queue/join",
        headers={"Origin": evil, "Access-Control-Request-Method": "POST"},
    )
    simple = http.get("config", headers={"Origin": evil})
    rest = http.get("healthz", headers={"Origin": evil})
    for response in (preflight, simple, rest):
        assert response.headers.get("access-control-allow-origin") not in (evil, "*")
        assert response.headers.get("access-control-allow-credentials") != "true" or (
            response.headers.get("access-control-allow-origin") is None
        )


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("evil.html", "text/html"), ("evil.png", "text/html"), ("evil.svg", "image/svg+xml")],
)
def test_an_uploaded_file_is_never_served_as_a_page(
    http: httpx.Client, name: str, content_type: str
) -> None:
    """Content-type confusion: HTML or SVG with script, uploaded, then opened by a victim."""
    script = b"<html><script>alert(document.cookie)</script></html>"
    if name.endswith(".svg"):
        script = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    (path,) = upload(http, name, script, content_type).json()
    served = http.get(f"gradio_api/file={path}")
    assert served.headers["x-content-type-options"] == "nosniff"
    kind = served.headers.get("content-type", "")
    assert not kind.startswith(("text/html", "image/svg")) or (
        "attachment" in served.headers.get("content-disposition", "")
    ), kind


def test_the_page_sends_a_public_pages_headers(http: httpx.Client) -> None:
    page = http.get("")
    assert page.status_code == 200
    assert "frame-ancestors" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


def test_startup_and_monitoring_routes_are_closed(http: httpx.Client) -> None:
    for path in (
        "gradio_api/startup-events",
        "monitoring",
        "monitoring/summary",
        "gradio_api/monitoring/summary",
    ):
        response = http.get(path)
        assert response.status_code in (403, 404), (path, response.status_code, response.text)
        assert response.text.strip() not in ("true", "false")


# --- nothing left on disk -----------------------------------------------------


def assert_nothing_left(served: Served, before: set[Path]) -> None:
    wait_for(lambda: served.files() <= before, timeout=5, every=0.05)


def chunks(total: int, files: int = 1, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """A multipart form of ``files`` files, ``total`` bytes in all, sent chunked."""
    for number in range(files):
        yield (
            f'--b\r\nContent-Disposition: form-data; name="files"; filename="{number}.png"'
            "\r\nContent-Type: image/png\r\n\r\n"
        ).encode()
        for _ in range(total // files // chunk):
            yield b"\0" * chunk
        yield b"\r\n"
    yield b"--b--\r\n"


@pytest.mark.parametrize(("total_mb", "files"), [(22, 1), (22, 2), (12, UPLOAD_FILES + 1)])
def test_an_upload_over_the_limit_or_of_several_files_leaves_nothing(
    http: httpx.Client, served: Served, total_mb: int, files: int
) -> None:
    before = served.files()
    response = http.post(
        "gradio_api/upload",
        content=chunks(total_mb * 1024 * 1024, files),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code in (400, 413), response.text
    assert_nothing_left(served, before)


def test_an_aborted_upload_leaves_nothing(served: Served) -> None:
    before = served.files()
    head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
    with socket.create_connection(address(served)) as raw:
        raw.sendall(
            b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000000\r\n\r\n"
            + head
            + b"\0" * 2_000_000
        )
        wait_for(lambda: served.files() - before, timeout=5)  # the part is on disk
    assert_nothing_left(served, before)


def test_the_recording_route_is_closed_and_leaves_nothing(
    http: httpx.Client, served: Served
) -> None:
    before = served.files()
    response = http.post(
        "gradio_api/process_recording", files={"video": ("v.mp4", b"\0" * 100_000, "video/mp4")}
    )
    assert response.status_code in (403, 404), response.text
    assert_nothing_left(served, before)


def test_a_good_upload_is_kept_for_its_classification_only(
    http: httpx.Client, served: Served
) -> None:
    """The one file an upload carries lands in the cache, and the page classifies it."""
    (path,) = upload(http, "cat.png", CAT_PHOTO.read_bytes(), "image/png").json()
    assert Path(path).is_relative_to(served.uploads)
    _, message = run_event(http, [file_data(path, meta=True)], fn_index(http))
    assert message["success"] is True, message


# --- holding the server -------------------------------------------------------


def test_headers_trickled_are_cut(served: Served) -> None:
    with socket.create_connection(address(served)) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()

        def trickle() -> None:
            for _ in range(40):
                time.sleep(0.5)
                try:
                    raw.sendall(b"X")
                except OSError:
                    return

        threading.Thread(target=trickle, daemon=True).start()
        said = closed_within(raw, LIMITS.header_timeout + 3)
    assert time.monotonic() - start < LIMITS.header_timeout + 2
    assert b"200 OK" not in said


def test_the_default_deadlines_fit_inside_herokus_router() -> None:
    """The router drops a request with no first byte in 30 s: a client's slow headers
    and body are cut, and answered, well before."""
    assert DEFAULTS.header_timeout + DEFAULTS.body_timeout < 30
    assert DEFAULTS.keep_alive_timeout <= DEFAULTS.header_timeout


def test_a_body_trickled_is_cut(served: Served) -> None:
    with socket.create_connection(address(served)) as raw:
        raw.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        start = time.monotonic()

        def trickle() -> None:
            for _ in range(100):
                time.sleep(1)
                try:
                    raw.sendall(b"\0" * 16)
                except OSError:
                    return

        threading.Thread(target=trickle, daemon=True).start()
        said = closed_within(raw, LIMITS.body_timeout + 5)
    assert time.monotonic() - start < LIMITS.body_timeout + 3
    assert said.startswith(b"HTTP/1.1 408"), said[:100]


def test_idle_connections_are_closed(served: Served) -> None:
    """Opened and never used, or used once and left open."""
    opened = [socket.create_connection(address(served)) for _ in range(20)]
    reused = socket.create_connection(address(served))
    reused.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    reused.recv(65536)
    try:
        for connection in [*opened, reused]:
            closed_within(connection, max(LIMITS.header_timeout, LIMITS.keep_alive_timeout) + 3)
    finally:
        for connection in [*opened, reused]:
            connection.close()


def test_a_64_kib_header_is_a_431(served: Served) -> None:
    with socket.create_connection(address(served)) as raw:
        start = time.monotonic()
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
        said = closed_within(raw, 5)
    assert time.monotonic() - start < QUICK_S
    assert said.startswith(b"HTTP/1.1 431"), said[:100]


def test_past_the_connection_cap_new_ones_get_a_quick_503_and_healthz_answers(
    served: Served, http: httpx.Client
) -> None:
    held = [socket.create_connection(address(served)) for _ in range(DEFAULTS.max_connections)]
    try:
        with httpx.Client(base_url=served.url, timeout=10) as fresh:
            start = time.perf_counter()
            busy = fresh.get("readyz")
            assert time.perf_counter() - start < QUICK_S
            assert busy.status_code == 503, busy.text
            assert int(busy.headers["retry-after"]) >= 1
        with httpx.Client(base_url=served.url, timeout=10) as fresh:
            assert fresh.get("healthz").status_code == 200
    finally:
        for connection in held:
            connection.close()
    wait_for(lambda: httpx.get(f"{served.url}readyz").status_code == 200, timeout=10)


def test_one_client_cannot_fill_the_queue(http: httpx.Client) -> None:
    """Behind Heroku's router a client is the last ``X-Forwarded-For`` entry."""
    (path,) = upload(http, "cat.png", CAT_PHOTO.read_bytes(), "image/png").json()
    fn = fn_index(http)
    body = {"data": [file_data(path, meta=True)], "fn_index": fn}

    def join(client: str) -> int:
        return http.post(
            "gradio_api/queue/join",
            json={**body, "session_hash": uuid.uuid4().hex},
            headers={"X-Forwarded-For": f"198.51.100.9, {client}"},  # the router's entry last
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        greedy = list(pool.map(join, ["203.0.113.66"] * 80))
    other = join("203.0.113.7")
    assert 503 in greedy
    assert greedy.count(200) >= DEFAULTS.queue_per_client
    assert other == 200


SESSION_FLOOD = 1000
"""Events, each in a new session: ~90 MB held at Gradio's default of 10,000 sessions."""


def test_sessions_made_by_the_thousand_hold_no_more_than_the_cap(
    http: httpx.Client, served: Served
) -> None:
    """Any client may name a new session in every event, and the server keeps each one's
    state and config (~90 kB): only ``PAGE_SESSIONS`` of them stay."""
    fn = fn_index(http, "explained_answer")
    run_event(http, [None, True], fn)
    before = served.instance.memory.current
    for _ in range(SESSION_FLOOD):
        status, _ = run_event(http, [None, True], fn)
        assert status == 200
    growth = served.instance.memory.current - before
    assert growth < PAGE_SESSIONS * MB / 2, f"{growth / MB:.0f} MB"


@pytest.mark.parametrize(
    ("hops", "forwarded", "client"),
    [
        (0, "203.0.113.5", "192.0.2.1"),  # no router: the peer, whatever the header says
        (1, "203.0.113.5", "203.0.113.5"),  # Heroku's router appended the client
        (1, "10.0.0.1, 203.0.113.5", "203.0.113.5"),  # the client's own entry is ignored
        (2, "203.0.113.5", "192.0.2.1"),  # fewer entries than proxies: the peer
    ],
)
def test_a_client_is_told_apart_by_what_the_router_appended(
    hops: int, forwarded: str, client: str
) -> None:
    from starlette.requests import Request

    from service.guard import client_of

    request = Request(
        {
            "type": "http",
            "headers": [(b"x-forwarded-for", forwarded.encode())],
            "client": ("192.0.2.1", 5000),
        }
    )
    assert client_of(hops)(request) == client


# --- metrics, and the app afterwards -----------------------------------------


def test_metrics_are_public_by_default_and_can_take_a_token(
    http: httpx.Client, model_path: Path
) -> None:
    from classifier.model import Classifier
    from service.api import build_api

    assert http.get("metrics").status_code == 200
    api = build_api(Classifier(model_path, warm=False), metrics_token="s3cret")
    with TestClient(api) as client:
        refused = client.get("metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert client.get("metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        allowed = client.get("metrics", headers={"Authorization": "Bearer s3cret"})
        assert allowed.status_code == 200
        assert "classifier_requests" in allowed.text


def test_the_app_still_answers_after_all_of_it(http: httpx.Client, served: Served) -> None:
    assert served.instance.process.poll() is None
    assert http.get("healthz").status_code == 200
    assert classify(http, CAT_PHOTO).status_code == 200
    result = Client(served.url, verbose=False).predict(
        handle_file(str(CAT_PHOTO)), api_name="/predict"
    )
    assert len(result["confidences"]) == 5
    log = served.instance.log.read_text()
    # Nothing reached the app's bug handler or uvicorn's. (Gradio itself prints a
    # traceback for an event called by fn_index that has no Python function.)
    assert "Unexpected error" not in log
    assert "Exception in ASGI application" not in log
