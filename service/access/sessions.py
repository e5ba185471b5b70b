"""The login cookie: signed, not stored, so that any dyno with the same settings reads it.

Its value is ``EXPIRY.NAME.SIGNATURE``: the expiry (Unix seconds) is inside
what is signed, so it cannot be stretched. The signing key is HMAC-SHA-256
of the user's name and password hash under ``SESSION_SECRET`` (empty when
unset). So every instance with the same ``USERS`` (and secret) accepts a
cookie any of them made, Heroku's router may send each request to another
dyno, and nothing is kept per process; a user's new password, a user
removed, or a new secret ends the sessions it signed. Logging out deletes
the cookie in the browser; a copy of it stays valid until it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from service.access.credentials import Credentials, User, b64

COOKIE = "session"
DOMAIN = b"classifier-session\0"
"""Keeps these signatures apart from any other use of the same secret."""


class Sessions:
    """Makes and reads login cookies for ``credentials``' users."""

    def __init__(
        self,
        credentials: Credentials,
        secret: str | None,
        lifetime_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credentials = credentials
        self.secret = (secret or "").encode()
        self.lifetime_s = int(lifetime_s)
        self.clock = clock

    def _signature(self, user: User, signed: str) -> str:
        key = hmac.new(
            self.secret, DOMAIN + f"{user.name}\0{user.hashed}".encode(), hashlib.sha256
        ).digest()
        return b64(hmac.new(key, signed.encode(), hashlib.sha256).digest())

    def issue(self, user: User) -> str:
        """A cookie value for ``user``, valid for ``lifetime_s``."""
        signed = f"{int(self.clock()) + self.lifetime_s}.{user.name}"
        return f"{signed}.{self._signature(user, signed)}"

    def user_of(self, value: str) -> User | None:
        """The user a cookie value was made for, if it is genuine and unexpired."""
        signed, _, signature = value.rpartition(".")
        expiry, _, name = signed.partition(".")
        user = self.credentials.users.get(name)
        if user is None or not expiry.isdigit() or int(expiry) <= self.clock():
            return None
        if not hmac.compare_digest(signature.encode(), self._signature(user, signed).encode()):
            return None
        return user
