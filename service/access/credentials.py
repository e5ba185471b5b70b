"""The entries of ``API_KEYS`` and ``USERS``: their one format, its parser, and the checks.

An entry is ``NAME:HASH`` (a key's may add ``:SCOPE+SCOPE``); entries are
separated by commas. Hashes use only letters, digits, ``-``, ``_`` and
``.``, so an entry needs no quoting in a shell, a Procfile or ``.env``:

- a key's: ``hmac-sha256.SALT.DIGEST``, HMAC-SHA-256 of the key under a
  random 16-byte salt. A fast hash is enough for a key of 128 random bits or
  more (``MIN_KEY_CHARS``): nobody can try 2**128 guesses, fast or slow.
- a password's: ``scrypt.LOG2N.R.P.SALT.DIGEST``, slow and memory-hard, for
  secrets people choose. The cost is in the hash, so it can be raised later.

Secrets are compared in constant time, and an unknown user's password is
checked against a stand-in hash of the same cost, so timing tells nobody
which names exist.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""A key's or a user's name: safe in a log line, a metric label and a cookie."""
SCOPES = ("classify", "feedback", "metrics")
"""What a key may be limited to; a key without a scope has them all."""
KEY_SCHEME = "hmac-sha256"
PASSWORD_SCHEME = "scrypt"
SALT_BYTES = 16
MIN_KEY_CHARS = 32
"""A key's shortest length: 32 characters of base64 carry 192 bits when random
(``openssl rand -base64 32``; the generated ones carry 256)."""
MIN_SECRET_CHARS = 32
BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
"""What a key may be made of: RFC 6750's token68, so it goes in a header as it is."""
MIN_PASSWORD_CHARS = 8
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 15, 8, 3
"""OWASP's scrypt floor for 32 MiB (N=2**15, r=8, p=3): ~0.1 s of one core a check."""
SCRYPT_MAX_BYTES = 128 * 1024 * 1024
"""The most memory one password check may take, whatever a hash asks for (a dyno has 512 MB)."""
_B64 = re.compile(r"[A-Za-z0-9_-]+")


class AccessSettingError(ValueError):
    """An entry of ``API_KEYS`` or ``USERS`` that cannot be used: the app must not start."""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    if not _B64.fullmatch(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class ApiKey:
    """A program's key, as its hash: it knows a key when it sees it, and cannot give it."""

    name: str
    salt: bytes
    digest: bytes
    scopes: frozenset[str]
    """Empty: every scope."""

    def digest_of(self, key: bytes) -> bytes:
        return hmac.new(self.salt, key, hashlib.sha256).digest()

    def allows(self, scope: str) -> bool:
        return not self.scopes or scope in self.scopes


@dataclass(frozen=True)
class User:
    """A person who may log in, with the hash of their password."""

    name: str
    hashed: str
    """The entry's hash as written: session cookies are signed with it, so a new
    password ends the user's sessions."""
    log2_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def digest_of(self, password: bytes) -> bytes:
        return scrypt(password, self.salt, self.log2_n, self.r, self.p, len(self.digest))


def scrypt(password: bytes, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    need = 128 * r * (2**log2_n + p + 2)
    return hashlib.scrypt(
        password, salt=salt, n=2**log2_n, r=r, p=p, maxmem=need + 1024 * 1024, dklen=length
    )


def generate_key() -> str:
    """A new key: 256 random bits in base64url, after ``key_`` (never a leading ``-``, and
    a secret scanner can tell it)."""
    return f"key_{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> str:
    """A key's hash, as ``API_KEYS`` takes it."""
    check_key(key)
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hmac.new(salt, key.encode(), hashlib.sha256).digest()
    return f"{KEY_SCHEME}.{b64(salt)}.{b64(digest)}"


def hash_password(password: str) -> str:
    """A password's hash, as ``USERS`` takes it."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccessSettingError(f"A password needs at least {MIN_PASSWORD_CHARS} characters.")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = scrypt(password.encode(), salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, 32)
    return f"{PASSWORD_SCHEME}.{SCRYPT_LOG2_N}.{SCRYPT_R}.{SCRYPT_P}.{b64(salt)}.{b64(digest)}"


def check_key(key: str) -> None:
    if len(key) < MIN_KEY_CHARS:
        raise AccessSettingError(
            f"A key needs at least {MIN_KEY_CHARS} random characters: let the tool make one "
            "(give it no input), or use `openssl rand -base64 32`."
        )
    if not BEARER_TOKEN.fullmatch(key):
        raise AccessSettingError(
            "A key may hold only letters, digits and - . _ ~ + / (then = at the end), "
            "to go in an Authorization header as it is."
        )


def check_secret(secret: str) -> None:
    """``SESSION_SECRET``: long enough not to be guessed."""
    if len(secret) < MIN_SECRET_CHARS:
        raise AccessSettingError(
            f"a session secret needs at least {MIN_SECRET_CHARS} characters "
            "(`openssl rand -base64 32`)"
        )


def check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise AccessSettingError(
            "A name is 1 to 64 letters, digits, '-', '_' or '.': it goes in logs and metrics."
        )


def key_entry(name: str, hashed: str, scopes: tuple[str, ...] = ()) -> str:
    """One ``API_KEYS`` entry; ``parse_keys`` reads it back."""
    return ":".join([name, hashed, *(["+".join(scopes)] if scopes else [])])


def parse_key(fields: list[str]) -> ApiKey:
    if len(fields) not in (2, 3):
        raise ValueError(f"is not NAME:{KEY_SCHEME}.SALT.DIGEST[:SCOPE+SCOPE]")
    name, hashed, *scope = fields
    scheme, salt, digest = hashed.split(".") if hashed.count(".") == 2 else ("", "", "")
    if scheme != KEY_SCHEME:
        raise ValueError(f"has no {KEY_SCHEME} hash")
    scopes = frozenset(scope[0].split("+")) if scope else frozenset()
    if unknown := scopes - set(SCOPES):
        raise ValueError(f"names a scope other than {', '.join(SCOPES)}: {sorted(unknown)}")
    return ApiKey(name, checked_b64(salt, SALT_BYTES), checked_b64(digest, 32), scopes)


def parse_user(fields: list[str]) -> User:
    if len(fields) != 2:
        raise ValueError(f"is not NAME:{PASSWORD_SCHEME}.LOG2N.R.P.SALT.DIGEST")
    name, hashed = fields
    parts = hashed.split(".")
    if len(parts) != 6 or parts[0] != PASSWORD_SCHEME or not all(x.isdigit() for x in parts[1:4]):
        raise ValueError(f"has no {PASSWORD_SCHEME} hash")
    log2_n, r, p = (int(x) for x in parts[1:4])
    if not (10 <= log2_n <= 24 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("has scrypt costs out of range (N 2**10 to 2**24, r 1 to 32, p 1 to 16)")
    if 128 * r * 2**log2_n > SCRYPT_MAX_BYTES:
        raise ValueError(f"asks scrypt for over {SCRYPT_MAX_BYTES // 2**20} MiB a check")
    return User(name, hashed, log2_n, r, p, checked_b64(parts[4], 8), checked_b64(parts[5], 16))


def checked_b64(text: str, least: int) -> bytes:
    try:
        data = unb64(text)
    except (ValueError, binascii.Error):
        raise ValueError("has a hash that is not base64url") from None
    if len(data) < least:
        raise ValueError("has a hash cut short")
    return data


Entry = TypeVar("Entry", ApiKey, User)


def parse_entries(text: str, parse: Callable[[list[str]], Entry], tool: str) -> tuple[Entry, ...]:
    """Every entry of a setting, or ``AccessSettingError`` naming the first bad one.

    The message never quotes an entry (it may be a secret pasted by mistake),
    only its position and, when it looks like one, its name.
    """
    pieces = [piece.strip() for piece in text.split(",")]
    entries = []
    for number, piece in enumerate(pieces, 1):
        fields = piece.split(":")
        where = f"entry {number} of {len(pieces)}"
        if len(fields) > 1 and NAME.fullmatch(fields[0]):
            where += f" ({fields[0]!r})"
        elif piece:
            raise AccessSettingError(
                f"{where} does not start with NAME: (`python -m service.access {tool} NAME` "
                "prints one)"
            )
        else:
            raise AccessSettingError(f"{where} is empty")
        try:
            entries.append(parse(fields))
        except ValueError as error:
            raise AccessSettingError(f"{where} {error}") from None
    names = [entry.name for entry in entries]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise AccessSettingError(f"names {repeated} more than once: each entry needs its own name")
    return tuple(entries)


def parse_keys(text: str) -> tuple[ApiKey, ...]:
    return parse_entries(text, parse_key, "hash-key")


def parse_users(text: str) -> tuple[User, ...]:
    return parse_entries(text, parse_user, "hash-password")


class Credentials:
    """The keys and users one app accepts, and the constant-time checks of both."""

    def __init__(self, keys: tuple[ApiKey, ...], users: tuple[User, ...]) -> None:
        self.keys = keys
        self.users = {user.name: user for user in users}

    def key_for(self, token: str) -> ApiKey | None:
        """The key ``token`` is, if any: every key is tried, whichever matches."""
        given = token.encode()
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.digest_of(given), key.digest):
                found = key
        return found

    def user_for(self, name: str, password: str) -> User | None:
        """The user, if ``password`` is theirs; an unknown name costs the same scrypt."""
        user = self.users.get(name)
        checked = user or self._stand_in
        matches = hmac.compare_digest(checked.digest_of(password.encode()), checked.digest)
        return user if matches and user is not None else None

    @functools.cached_property
    def _stand_in(self) -> User:
        """A user nobody is, at the first user's cost, for unknown names."""
        like = next(iter(self.users.values()))
        salt = secrets.token_bytes(SALT_BYTES)
        digest = scrypt(secrets.token_bytes(16), salt, like.log2_n, like.r, like.p, 32)
        return User("", "", like.log2_n, like.r, like.p, salt, digest)
