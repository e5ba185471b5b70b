"""Log lines a client cannot forge: each record starts one line at the left margin, and
nothing a client sends starts another, in every logger of the process and in what
libraries print."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import socket
import time
import traceback
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest
from starlette.requests import ClientDisconnect

from service.logs import CONTINUATION, EscapingFormatter, printed_lines_logged
from service.request_id import LOG_FORMAT, RequestContext, RequestIdFilter
from tests.support.harness import Instance, serving, wait_for
from tests.support.photos import CAT_PHOTO

FORGED = "ERROR forged [x]: pwned"
"""What a client would like to see as a record of its own in the log."""
BREAKS = [chr(code) for code in [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]]
"""Every character a log reader or a terminal may take for a line break or a command."""
ENCODED_BREAKS = ["%0a", "%0d", "%0d%0a", "%E2%80%A8", "%C2%85"]
SENT_BREAKS = ["\n", "\r", "\r\n", "\u2028", "\u2029", "\x85", "\x0b", "\x1b"]
"""Those sent through each value of the app (every one of ``BREAKS`` goes through the
formatter above): the line breaks of ASCII, Unicode and Latin-1, and a terminal's escape."""
RECORD = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ \[[\w.:-]+\]: ")


def hostile(text: str = "x", breaks: Sequence[str] = (*BREAKS, "\r\n")) -> Iterator[str]:
    """``text`` followed by a forged record, after each of ``breaks``."""
    for brk in breaks:
        yield f"{text}{brk}{FORGED}"


def records(lines: list[str]) -> list[str]:
    """The log's lines that start records; fails on a line that neither starts one nor
    continues one, or that starts a forged one."""
    started = []
    for line in lines:
        assert not line.startswith(FORGED[:12]), line
        if RECORD.match(line):
            started.append(line)
        else:
            assert line.startswith(CONTINUATION), line
    return started


@contextlib.contextmanager
def captured() -> Iterator[io.StringIO]:
    """The root logger's records, formatted as the app formats them, in a string."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


# --- the mechanism --------------------------------------------------------------------


@pytest.mark.parametrize("value", list(hostile()), ids=repr)
def test_a_value_with_a_line_break_stays_on_its_records_line(value: str) -> None:
    with captured() as stream:
        logging.getLogger("uvicorn.error").info("Seen %s", value)
        logging.getLogger("gradio").warning(value)  # a message that is itself the value
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert len(records(lines)) == 2


def test_a_traceback_keeps_its_lines_and_its_message_forges_none() -> None:
    with captured() as stream:
        for value in hostile():
            try:
                raise ValueError(f"bad value {value}")
            except ValueError:
                logging.getLogger("app").exception("Failed on %s", value)
    lines = stream.getvalue().splitlines()
    assert len(records(lines)) == len(list(hostile()))
    assert sum(line.strip().startswith("Traceback") for line in lines) == len(list(hostile()))


def test_a_client_path_reaches_the_log_on_one_line() -> None:
    """The request's own log line (a client gone mid-body) names its path."""

    async def app(scope: object, receive: object, send: object) -> None:
        raise ClientDisconnect

    with captured() as stream:
        for value in hostile("/upload"):
            scope = {"type": "http", "method": "POST", "path": value, "headers": []}
            asyncio.run(RequestContext(app)(scope, None, None))  # type: ignore[arg-type]
    lines = stream.getvalue().splitlines()
    assert len(records(lines)) == len(lines) == len(list(hostile()))
    assert all("went away" in line for line in lines)


def test_what_a_library_prints_is_logged_a_line_a_record() -> None:
    with captured() as stream, printed_lines_logged():
        print(f"id={'x'}, file_name={FORGED!s}\n{FORGED}")
        try:
            raise KeyError(FORGED)
        except KeyError:
            traceback.print_exc()
    lines = stream.getvalue().splitlines()
    assert records(lines) == lines
    assert lines[0].startswith("INFO stdout [-]: id=x")
    assert lines[1] == f"INFO stdout [-]: {FORGED}"
    assert lines[2] == "WARNING stderr [-]: Traceback (most recent call last):"


# --- the app, attacked through every value a client controls -------------------------


@pytest.fixture(scope="module")
def logged(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    folder = tmp_path_factory.mktemp("logs")
    env = {"GRADIO_TEMP_DIR": str(folder / "uploads")}
    with serving(model_path, folder / "app.log", **env) as instance:
        yield instance


def raw(instance: Instance, request: bytes) -> None:
    parts = urlsplit(instance.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as connection:
        connection.sendall(request)
        connection.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            while connection.recv(65536):
                pass


def page_events(http: httpx.Client, value: str) -> None:
    """Every event of the page, each input ``value``, and ``value`` as the session."""
    for dependency in http.get("config").json()["dependencies"]:
        for session in (uuid.uuid4().hex, value):
            body = {
                "data": [value] * len(dependency["inputs"]),
                "fn_index": dependency["id"],
                "session_hash": session,
            }
            joined = http.post("gradio_api/queue/join", json=body)
            if joined.status_code == 200:
                with http.stream(
                    "GET", "gradio_api/queue/data", params={"session_hash": session}
                ) as stream:
                    for line in stream.iter_lines():
                        if "process_completed" in line or "close_stream" in line:
                            break


def test_no_request_writes_a_forged_line_into_the_apps_log(logged: Instance) -> None:
    photo = CAT_PHOTO.read_bytes()
    encoded = [f"x{brk}{quote(FORGED)}" for brk in ENCODED_BREAKS]
    with httpx.Client(base_url=logged.url, timeout=60) as http:
        for value in encoded:  # paths, queries, headers: percent-encoded
            for path in (value, f"gradio_api/file={value}", f"gradio_api/call/{value}"):
                http.get(path)
                http.post(path, content=b"{}", headers={"Content-Type": "application/json"})
            http.get("healthz", params={"q": value}, headers={"X-Request-ID": value})
            http.post(f"classify?k={value}", files={"file": ("a.png", photo)})
            http.post("classify", content=photo, headers={"Content-Type": f"image/{value}"})
        for value in hostile(breaks=SENT_BREAKS):  # names, fields, payloads: any character
            http.post("classify", files={"file": (value, b"not an image")})
            http.post("classify/batch", files=[("files", (value, b"x")), ("files", (value, photo))])
            http.post("gradio_api/upload", files={"files": (value, b"x", "image/png")})
            http.post("classify", files={value: ("a.png", photo)})
        for value in hostile(breaks=SENT_BREAKS[:4]):
            page_events(http, value)
    for value in (b"/x\nERROR forged", b"/x\rERROR forged", b"/x\x85ERROR forged"):
        raw(logged, b"GET " + value + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        raw(logged, b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: a" + value + b"\r\n\r\n")
        raw(logged, b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nx")

    def settled() -> bool:
        size = logged.log.stat().st_size
        time.sleep(0.5)
        return logged.log.stat().st_size == size

    wait_for(settled, timeout=30)
    lines = logged.log.read_text(errors="replace").splitlines()
    started = records(lines)
    assert any(line.startswith("WARNING stderr [") for line in started)  # Gradio's prints
    assert any("forged" in line for line in started)  # in records of their own, escaped
