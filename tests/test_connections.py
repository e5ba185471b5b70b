"""Connections as a direct deployment takes them (no proxy in front): one address cannot
hold every connection, and a request framed two ways is refused and its connection closed.

One instance of its own, run as in a container (``$DYNO`` unset, so
``FORWARDED_HOPS=0``: a client is the connection's peer). 127.0.0.1 and
127.0.0.2 are both loopback on Linux: a client socket bound to one of them
is another address to the app.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from service.internals import PeerConnections
from service.server import GracefulServer
from service.settings import Settings
from tests.support.harness import Instance, serving, wait_for
from tests.support.sockets import closed_within

DEFAULTS = Settings()
HOLDER, OTHER = "127.0.0.2", "127.0.0.1"
QUICK_S = 5.0
"""A refusal arrives within this (generous: another job may keep a core busy)."""


@pytest.fixture(scope="module")
def direct(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    folder = tmp_path_factory.mktemp("connections")
    # Silent sockets are held for the length of a test, not cut by the header deadline.
    with serving(model_path, folder / "app.log", HEADER_TIMEOUT="60") as instance:
        yield instance


def connect(instance: Instance, source: str) -> socket.socket:
    parts = urlsplit(instance.url)
    return socket.create_connection(
        (parts.hostname or OTHER, parts.port or 80), timeout=QUICK_S, source_address=(source, 0)
    )


def still_open(connection: socket.socket) -> bool:
    """Nothing to read and no end of stream: the server keeps it."""
    connection.setblocking(False)
    try:
        return connection.recv(1) == b"" and False
    except BlockingIOError:
        return True
    finally:
        connection.settimeout(QUICK_S)


# --- connections per address ------------------------------------------------------


def test_one_address_cannot_take_every_connection(direct: Instance) -> None:
    """The lock-out: one address opens more silent sockets than ``MAX_CONNECTIONS``."""
    cap = DEFAULTS.max_connections_per_peer
    held = [connect(direct, HOLDER) for _ in range(DEFAULTS.max_connections + 1)]
    try:
        for connection in held[cap:]:
            said = closed_within(connection, QUICK_S)
            assert said.startswith(b"HTTP/1.1 503"), said[:100]
            assert b"retry-after: 1" in said
            assert "Too many connections" in json.loads(said.split(b"\r\n\r\n", 1)[1])["error"]
        assert all(still_open(connection) for connection in held[:cap])
        with httpx.Client(base_url=direct.url, timeout=10) as other:
            assert other.get("readyz").status_code == 200
            assert other.get("healthz").status_code == 200
    finally:
        for connection in held:
            connection.close()


def test_an_address_at_its_cap_gets_its_connections_back_as_it_closes(direct: Instance) -> None:
    cap = DEFAULTS.max_connections_per_peer
    held = [connect(direct, HOLDER) for _ in range(cap)]
    try:
        refused = connect(direct, HOLDER)
        assert closed_within(refused, QUICK_S).startswith(b"HTTP/1.1 503")
        refused.close()
        held.pop().close()

        def answered() -> bool:
            with connect(direct, HOLDER) as again:
                again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return closed_within(again, QUICK_S).startswith(b"HTTP/1.1 200")

        wait_for(answered, timeout=10, every=0.05)
    finally:
        for connection in held:
            connection.close()


@pytest.mark.parametrize(("hops", "cap"), [(0, DEFAULTS.max_connections_per_peer), (1, None)])
def test_behind_a_router_the_cap_per_address_is_off(hops: int, cap: int | None) -> None:
    """Behind Heroku's router every connection comes from the router."""
    server = GracefulServer(lambda *args: None, Settings(forwarded_hops=hops))  # type: ignore[arg-type]
    assert server.server.config.http.keywords["limits"].max_per_peer == cap  # type: ignore[union-attr]


def test_peer_connections_count_each_address_apart() -> None:
    peers = PeerConnections(2)
    assert [peers.open("a"), peers.open("a"), peers.open("a"), peers.open("b")] == [
        True,
        True,
        False,
        True,
    ]
    peers.close("a")
    assert peers.open("a")
    unbounded = PeerConnections(None)
    assert all(unbounded.open("a") for _ in range(1000))


def test_the_default_cap_per_address_leaves_most_connections_to_others() -> None:
    assert DEFAULTS.max_connections_per_peer * 3 <= DEFAULTS.max_connections


# --- framing (RFC 9112, section 6.1) ------------------------------------------------

CHUNKED_BODY = b"5\r\nhello\r\n0\r\n\r\n"
SMUGGLED = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
"""A second request hidden behind the first one's body: it must never be answered."""


def request(*headers: bytes, body: bytes = CHUNKED_BODY) -> bytes:
    """``POST /classify`` (which reads its body: 415, not an image) with ``headers`` (each
    a whole line, folds included) and ``body``, then ``SMUGGLED`` in the same bytes."""
    head = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n" + b"".join(
        line + b"\r\n" for line in headers
    )
    return head + b"\r\n" + body + SMUGGLED


def spellings() -> Iterator[tuple[str, bytes]]:
    """Requests framed by both ``Transfer-Encoding`` and ``Content-Length``, spelled as
    parsers disagree on them: casing, order, duplicates, codings, lists, folding."""
    te_names = [
        b"Transfer-Encoding",
        b"transfer-encoding",
        b"TRANSFER-ENCODING",
        b"tRANSFER-eNCODING",
    ]
    cl_names = [b"Content-Length", b"content-length", b"CONTENT-LENGTH"]
    te_values = [b"chunked", b"Chunked", b"CHUNKED", b" chunked", b"chunked  "]
    length = str(len(CHUNKED_BODY)).encode()
    for number, (te, cl, value) in enumerate(
        zip(itertools.cycle(te_names), itertools.cycle(cl_names), te_values * 3, strict=False)
    ):
        pair = [te + b": " + value, cl + b": " + length]
        yield f"both-{number}", request(*(pair if number % 2 else pair[::-1]))
    te, cl = b"Transfer-Encoding: chunked", b"Content-Length: " + length
    yield "length twice", request(cl, te, cl)
    yield "length listed", request(te, b"Content-Length: " + length + b", " + length)
    yield "length zero", request(te, b"Content-Length: 0")
    yield "chunked twice", request(te, te, cl)
    for coding in (b"gzip, chunked", b"chunked, gzip", b"identity, chunked", b"chunked,chunked"):
        yield f"coding {coding.decode()}", request(b"Transfer-Encoding: " + coding, cl)
    yield "coding split over two headers", request(b"Transfer-Encoding: gzip", te, cl)
    yield "encoding folded", request(b"Transfer-Encoding:", b" chunked", cl)
    yield "coding folded", request(b"Transfer-Encoding: gzip,", b"\tchunked", cl)
    yield "length folded", request(te, b"Content-Length:", b" " + length)
    yield "encoding folded into another header", request(b"X-A: b", b" " + te, cl)
    yield "encoding folded, bare newlines", request(b"X-A: b\n\t" + te, cl)


REFUSALS = {
    "A request may carry Content-Length or Transfer-Encoding, not both.",
    "A header may not be folded onto the next line.",
    "The only Transfer-Encoding taken is chunked, in one header.",
}


def answers(said: bytes) -> list[int]:
    """The statuses of the responses in ``said``, in order."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", said)]


@pytest.mark.parametrize("sent", [sent for _, sent in spellings()], ids=[n for n, _ in spellings()])
def test_a_request_framed_two_ways_is_refused_and_its_connection_closed(
    direct: Instance, sent: bytes
) -> None:
    with connect(direct, OTHER) as raw:
        raw.sendall(sent)
        said = closed_within(raw, QUICK_S)
    assert len(answers(said)) == 1, said  # the smuggled request is never answered
    assert answers(said)[0] in (400, 501), said
    assert json.loads(said.split(b"\r\n\r\n", 1)[1])["error"] in REFUSALS


@pytest.mark.parametrize(
    "coding", [b"gzip", b"identity", b"chunked, gzip", b"gzip, chunked", b"compress"]
)
def test_a_transfer_coding_other_than_chunked_is_501(direct: Instance, coding: bytes) -> None:
    with connect(direct, OTHER) as raw:
        raw.sendall(request(b"Transfer-Encoding: " + coding))
        said = closed_within(raw, QUICK_S)
    assert answers(said) == [501], said
    assert "chunked" in json.loads(said.split(b"\r\n\r\n", 1)[1])["error"]


@pytest.mark.parametrize(
    "framing",
    [
        [b"Transfer-Encoding: chunked"],
        [b"transfer-encoding: CHUNKED"],
        [b"Content-Length: 15"],
        [b"Content-Length: 15", b"content-length: 15"],
    ],
    ids=["chunked", "chunked, other casing", "length", "length twice, equal"],
)
def test_one_framing_is_taken_and_the_connection_kept(direct: Instance, framing: list) -> None:
    """The controls: one way to frame the body (not an image: 415), then the next request
    on the same connection (200)."""
    with connect(direct, OTHER) as raw:
        raw.sendall(request(*framing))
        said = closed_within(raw, QUICK_S)
    assert answers(said) == [415, 200], said


def test_a_folded_header_is_refused_alone_too(direct: Instance) -> None:
    with connect(direct, OTHER) as raw:
        raw.sendall(request(b"X-A: b", b" c", body=b""))
        said = closed_within(raw, QUICK_S)
    assert answers(said) == [400], said
    assert "folded" in json.loads(said.split(b"\r\n\r\n", 1)[1])["error"]


def test_a_malformed_request_is_answered_in_the_apis_shape(direct: Instance) -> None:
    with connect(direct, OTHER) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n")
        said = closed_within(raw, QUICK_S)
    assert answers(said) == [400], said
    assert json.loads(said.split(b"\r\n\r\n", 1)[1]) == {
        "error": "The request is not valid HTTP/1.1."
    }
