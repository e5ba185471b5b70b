"""Raw sockets to an app: what a client that speaks HTTP by hand sees."""

from __future__ import annotations

import socket
import time


def closed_within(connection: socket.socket, seconds: float) -> bytes:
    """What the server sent before it closed ``connection``; fails if it is still open."""
    connection.settimeout(seconds)
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = connection.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data
    raise AssertionError(f"still open after {seconds} s; got {received[:200]!r}")
