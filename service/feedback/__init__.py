"""Corrections from the people who use the app: "wrong? it is ...", kept in a database.

``Feedback`` validates a correction, keeps each client to a rate, re-encodes
the photo from the classifier's own decode (never the uploaded bytes) and
hands the row to the store (``service.feedback.store``: SQLAlchemy over
SQLite, or PostgreSQL when ``DATABASE_URL`` is set). The store, and with it
SQLAlchemy, is imported and connected when the first correction is sent:
startup, ``/readyz`` and classification never wait for a database, and an
app nobody corrects never pays for one in memory. ``python -m
service.feedback export`` writes what is stored as a training set
(``docs/feedback.md``).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import secrets
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from classifier.errors import ClassifierError
from classifier.options import TOP_K

if TYPE_CHECKING:
    from PIL import Image

    from classifier.model import Classifier
    from classifier.preprocess import ImageSource
    from service.feedback.store import Store
    from service.settings import Settings

log = logging.getLogger(__name__)

PHOTO_SIDE = 640
"""The longest side of a stored photo, in pixels."""
JPEG_QUALITY = 85
MAX_LABEL_CHARS = 100
RATE_WINDOW_S = 3600
"""The rate is counted over this window: ``FEEDBACK_RATE`` an hour."""
STORE_RETRY_AFTER_S = 30
"""What a client is told to wait when the database cannot be reached."""
HEROKU_ADDON = "heroku-postgresql:essential-0"
DATABASE_SCHEMES = ("postgres", "postgresql", "postgresql+psycopg", "sqlite")


class FeedbackError(ClassifierError):
    """A correction that was not stored; the message says why and what to do."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}


class LabelRefusedError(FeedbackError):
    """A label (or predicted label, or request id) that cannot be stored as given."""

    status = 422
    outcome = "bad_label"


class RateLimitedError(FeedbackError):
    """The client sent ``FEEDBACK_RATE`` corrections within the last hour."""

    status = 429
    outcome = "rate_limited"


class StoreDownError(FeedbackError):
    """The database cannot be reached or answers with an error: try again later."""

    status = 503
    outcome = "store_down"


class StoreFullError(FeedbackError):
    """The store holds ``FEEDBACK_MAX_ITEMS`` items or ``FEEDBACK_MAX_MB`` megabytes."""

    status = 507
    outcome = "store_full"

    @property
    def server_fault(self) -> bool:
        return False  # a limit reached on purpose, not a bug: the message is for the user


class FeedbackOffError(FeedbackError):
    """Feedback is turned off (``FEEDBACK=off``, or a dyno without a database)."""

    status = 404
    outcome = "feedback_off"


@dataclass(frozen=True)
class Limits:
    """What one client, and the store as a whole, may hold."""

    per_hour: int
    max_items: int
    max_bytes: int


@dataclass(frozen=True)
class Correction:
    """One row to store: everything but its id and time, which the store gives it."""

    model_name: str
    model_sha256: str
    answered: list[tuple[str, float]]
    label: str
    known: bool
    predicted: str | None
    photo: bytes
    client_hash: str
    request_id: str | None


class Feedback:
    """The feedback service over a store: validates, rate-limits, re-encodes, stores."""

    def __init__(
        self,
        classifier: Classifier,
        database_url: str,
        limits: Limits,
        salt: bytes | Path,
        forwarded_hops: int = 0,
        off_message: str | None = None,
    ) -> None:
        self.classifier = classifier
        self.database_url = database_url
        self.limits = limits
        self.forwarded_hops = forwarded_hops
        self.off_message = off_message
        self.enabled = off_message is None
        self._salt = salt
        self._key: bytes | None = None
        self._known = {name for _, name in classifier.labels}
        self._store: Store | None = None
        self._store_lock = threading.Lock()

    @classmethod
    def from_settings(cls, classifier: Classifier, settings: Settings) -> Feedback:
        """The service the settings ask for; off, with the reason logged, where it cannot
        keep what it is sent."""
        url = settings.database_url.get_secret_value() if settings.database_url else None
        if url is not None:
            check_scheme(url)
        limits = Limits(
            settings.feedback_rate,
            settings.feedback_max_items,
            settings.feedback_max_mb * 1024 * 1024,
        )
        off = off_reason(settings.feedback, url, settings.dyno)
        if off:
            log.info("%s", off)
        if url is None:
            url = f"sqlite:///{sqlite_path(settings)}"
        return cls(
            classifier, url, limits, client_salt(settings, url), settings.forwarded_hops, off
        )

    @property
    def store(self) -> Store:
        """The store, imported and connected on first use."""
        with self._store_lock:
            if self._store is None:
                from service.feedback.store import Store

                try:
                    self._store = Store(self.database_url)
                except OSError as error:
                    raise unwritable(error) from error
            return self._store

    def send(
        self,
        photo: ImageSource,
        label: str,
        client: str,
        *,
        predicted: str | None = None,
        answered: dict[str, float] | None = None,
        request_id: str | None = None,
    ) -> int:
        """Store one correction; returns its id. With ``answered`` (the page's top-k, label ->
        probability) the photo is not classified again; without, it is classified once, and
        that decode also gives the photo to keep."""
        if not self.enabled:
            raise FeedbackOffError(self.off_message or "Feedback is off.")
        label = checked_text(label, "label")
        predicted = checked_text(predicted, "predicted") if predicted is not None else None
        request_id = checked_request_id(request_id)
        client_hash = self.client_hash(client)
        self.store.check_room(client_hash, self.limits, time.time() - RATE_WINDOW_S)
        if answered is None:
            classified = self.classifier.classify_photo(photo, TOP_K, photo_side=PHOTO_SIDE)
            top = [(p.label, p.probability) for p in classified.predictions]
            kept = classified.photo
        else:
            top = sorted(answered.items(), key=lambda item: -item[1])
            kept = decoded_photo(self.classifier, photo)
        metadata = self.classifier.metadata
        correction = Correction(
            model_name=metadata.name,
            model_sha256=metadata.sha256,
            answered=top,
            label=label,
            known=label in self._known,
            predicted=predicted if predicted is not None else (top[0][0] if top else None),
            photo=jpeg(kept),
            client_hash=client_hash,
            request_id=request_id,
        )
        return self.store.add(correction, self.limits)

    def client_hash(self, client: str) -> str:
        """The client's address, keyed by the salt: the same client, the same hash, and no
        address in the database."""
        if self._key is None:
            try:
                self._key = self._salt if isinstance(self._salt, bytes) else kept_key(self._salt)
            except OSError as error:
                raise unwritable(error) from error
        return hmac.new(self._key, client.encode(), hashlib.sha256).hexdigest()[:32]


def off_reason(wanted: bool, database_url: str | None, dyno: str | None) -> str | None:
    """Why feedback is off, with how to turn it on; ``None`` when it is on."""
    if not wanted:
        return "Feedback is turned off on this server (FEEDBACK=off)."
    if dyno and not database_url:
        return (
            "Feedback needs a database on Heroku, whose disk is wiped at every restart: "
            f"`heroku addons:create {HEROKU_ADDON}` sets DATABASE_URL and turns it on."
        )
    return None


def check_scheme(database_url: str) -> None:
    """``SettingsError`` unless the URL names a database the store takes."""
    from service.settings import SettingsError

    scheme = urlsplit(database_url).scheme
    if scheme not in DATABASE_SCHEMES:
        raise SettingsError(
            f"DATABASE_URL is not allowed: its scheme is {scheme!r}, not one of "
            f"{', '.join(DATABASE_SCHEMES)} (postgres://user:password@host:5432/name)."
        )


def sqlite_path(settings: Settings) -> Path:
    """The SQLite file: ``FEEDBACK_DB``, or ``feedback.sqlite3`` in ``DATA_DIR``."""
    return settings.feedback_db or settings.data_dir / "feedback.sqlite3"


def client_salt(settings: Settings, database_url: str) -> bytes | Path:
    """The key of the client hash: ``FEEDBACK_SALT``; else derived from the database's URL,
    whose password is a secret every instance shares; else (SQLite) the file beside the
    database that keeps a random one, created on the first correction."""
    if settings.feedback_salt:
        return settings.feedback_salt.get_secret_value().encode()
    if settings.database_url:
        return hashlib.sha256(b"feedback client salt\0" + database_url.encode()).digest()
    return sqlite_path(settings).with_suffix(".salt")


def kept_key(path: Path) -> bytes:
    """The random key kept in ``path``, made on first use (only its owner may read it); two
    instances making it at once agree on one (the first link wins)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as written:
            written.write(secrets.token_hex(32))
        try:
            os.link(candidate, path)
        except FileExistsError:
            pass
        finally:
            candidate.unlink()
    return path.read_text().strip().encode()


def unwritable(error: OSError) -> StoreDownError:
    """A data folder the app cannot write: 503, and a log line saying what to do."""
    log.error(
        "Feedback cannot be stored in %s (%s): set DATABASE_URL, or DATA_DIR to a folder "
        "the app may write (a volume that outlives the container), or FEEDBACK=0",
        error.filename,
        error.strerror,
    )
    return StoreDownError(
        "Feedback cannot be stored on this server right now.", retry_after=STORE_RETRY_AFTER_S
    )


def checked_text(value: str, field: str) -> str:
    """A label as people typed it, or ``LabelRefusedError`` saying what is wrong with it."""
    text = value.strip()
    if not text:
        raise LabelRefusedError(f"{field}: say what the photo is (1 to {MAX_LABEL_CHARS} chars).")
    if len(text) > MAX_LABEL_CHARS:
        raise LabelRefusedError(f"{field}: at most {MAX_LABEL_CHARS} characters, not {len(text)}.")
    if any(unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") for char in text):
        raise LabelRefusedError(f"{field}: no control characters or line breaks, please.")
    return text


def checked_request_id(value: str | None) -> str | None:
    """A request id as the app takes them from the router (``X-Request-ID``), or ``None``."""
    if value is None or not value.strip():
        return None
    from service.request_id import _ACCEPTED

    value = value.strip()
    if not _ACCEPTED.fullmatch(value):
        raise LabelRefusedError(
            "request_id: the X-Request-ID of the classification this corrects (letters, "
            "digits and `._:-`, at most 200)."
        )
    return value


def decoded_photo(classifier: Classifier, photo: ImageSource) -> Image.Image:
    """The upright photo, at most ``PHOTO_SIDE`` a side, from one decode in the classifier's
    memory budget, without running the model."""
    from classifier.preprocess import decode_with_photo

    decoded = decode_with_photo(
        photo,
        classifier.metadata.preprocessing,
        classifier.max_pixels,
        classifier.budget.reserve,
        PHOTO_SIDE,
    )
    assert decoded.photo is not None
    return decoded.photo


def jpeg(photo: Image.Image) -> bytes:
    """The photo as we encode it: a baseline JPEG of its pixels, nothing else of the upload's
    (Pillow would carry a JPEG comment over from ``info``)."""
    clean = photo.convert("RGB")  # a copy
    clean.info.clear()
    clean.thumbnail((PHOTO_SIDE, PHOTO_SIDE))
    encoded = io.BytesIO()
    clean.save(encoded, "JPEG", quality=JPEG_QUALITY)
    return encoded.getvalue()
