"""Where corrections are kept: SQLAlchemy Core over SQLite, or PostgreSQL with psycopg 3.

Imported when the first correction is sent (``Feedback.store``), never at
startup. A database that cannot be reached, or that fails a statement,
answers ``StoreDownError`` (503 with ``Retry-After``) in a few seconds at
most: connecting gives up after ``CONNECT_TIMEOUT_S``, a statement after
``STATEMENT_TIMEOUT_S``, waiting for one of the pool's connections after
``POOL_TIMEOUT_S``; the pool checks a connection before lending it, so a
database that was restarted is used again without restarting the app.

Each process keeps at most ``POOL_SIZE`` connections: Heroku Postgres'
smallest plan (essential-0) takes 20, and ``web=4`` holds 8 of them, 16
while a deploy's new dynos overlap the old ones, which leaves room for a
``heroku run python -m service.feedback export`` and a ``heroku pg:psql``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Row, create_engine, delete, event, func, or_, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from service.feedback import (
    DATABASE_SCHEMES,
    STORE_RETRY_AFTER_S,
    Correction,
    Limits,
    RateLimitedError,
    StoreDownError,
    StoreFullError,
)
from service.feedback.schema import SchemaTooNewError, feedback, migrate

log = logging.getLogger(__name__)

POOL_SIZE = 2
POOL_TIMEOUT_S = 5
CONNECT_TIMEOUT_S = 3
STATEMENT_TIMEOUT_S = 10
SQLITE_BUSY_TIMEOUT_S = 5
EXPORT_BATCH = 100
"""Rows fetched at a time when exporting: memory holds this many photos, whatever the total."""
REFUSED_WRITES = {"53100", "42501"}
"""Disk full, and the privilege Heroku revokes from a plan over its storage (the database
then only reads and deletes)."""


def engine_url(database_url: str) -> URL:
    """``DATABASE_URL`` as SQLAlchemy takes it: Heroku's ``postgres://`` to psycopg 3,
    with SSL required (Heroku Postgres refuses plain connections) unless the URL says
    otherwise (``?sslmode=disable`` for a local server) and a short connect timeout."""
    url = make_url(database_url)
    if url.drivername not in DATABASE_SCHEMES:
        raise ValueError(f"not a database this app stores feedback in: {url.drivername}")
    if url.drivername == "sqlite":
        return url
    query = {"sslmode": "require", "connect_timeout": str(CONNECT_TIMEOUT_S), **url.query}
    return url.set(drivername="postgresql+psycopg", query=query)


def create_store_engine(database_url: str, statement_timeout_s: float | None) -> Engine:
    """A small pool over the database; ``statement_timeout_s`` bounds each statement."""
    url = engine_url(database_url)
    if url.drivername == "sqlite":
        return sqlite_engine(url)
    options = {}
    if statement_timeout_s:
        options["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
    return create_engine(
        url,
        pool_size=POOL_SIZE,
        max_overflow=0,
        pool_timeout=POOL_TIMEOUT_S,
        pool_pre_ping=True,
        pool_recycle=600,
        connect_args=options,
    )


def sqlite_engine(url: URL) -> Engine:
    """SQLite in WAL mode (readers never block the writer), each write transaction taking
    the write lock at its start (``BEGIN IMMEDIATE``), so concurrent writers wait for each
    other up to the busy timeout instead of failing on a lock upgrade."""
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        pool_size=POOL_SIZE,
        max_overflow=0,
        pool_timeout=POOL_TIMEOUT_S,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
    )

    @event.listens_for(engine, "connect")
    def connected(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun below, not by sqlite3
        dbapi_connection.execute("PRAGMA journal_mode=WAL")

    @event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        writing = connection.get_execution_options().get("writing", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")

    return engine


class Store:
    """The feedback table: add, check room, stream out, purge."""

    def __init__(self, database_url: str, statement_timeout_s: float | None = STATEMENT_TIMEOUT_S):
        self.engine = create_store_engine(database_url, statement_timeout_s)
        self._migrated = False
        self._migrating = threading.Lock()
        self._full = False

    @contextmanager
    def _connection(self, writing: bool = False) -> Iterator[Connection]:
        """A connection in a transaction, the schema created or migrated first; database
        failures raised as ``StoreDownError`` or ``StoreFullError``."""
        try:
            self._ensure_schema()
            with self.engine.connect() as connection:
                connection = connection.execution_options(writing=writing)
                with connection.begin():
                    yield connection
        except PoolTimeoutError as error:
            raise self._down("every connection of the pool is busy", error) from error
        except DBAPIError as error:
            if sqlstate(error) in REFUSED_WRITES or "disk is full" in str(error.orig):
                log.warning("The feedback database refuses writes: %s", first_line(error))
                raise StoreFullError(
                    "The feedback store is full: it takes no more corrections for now.",
                    retry_after=3600,
                ) from error
            if isinstance(error, OperationalError | InterfaceError) or error.connection_invalidated:
                raise self._down("the database failed", error) from error
            raise  # a statement of ours the database refuses: a bug, answered 500
        except SchemaTooNewError as error:
            raise self._down(str(error), error) from error

    def _down(self, why: str, error: BaseException) -> StoreDownError:
        log.warning("Feedback not stored: %s (%s)", why, first_line(error))
        return StoreDownError(
            "The feedback store cannot be reached right now: please try again in a minute.",
            retry_after=STORE_RETRY_AFTER_S,
        )

    def _ensure_schema(self) -> None:
        with self._migrating:
            if self._migrated:
                return
            with self.engine.connect() as connection:
                connection = connection.execution_options(writing=True)
                with connection.begin():
                    found = migrate(connection)
            if found == 0:
                log.info("Created the feedback database's tables")
            self._migrated = True

    def check_room(self, client_hash: str, limits: Limits, since: float) -> None:
        """Raise ``RateLimitedError`` if the client sent ``limits.per_hour`` since ``since``
        (a timestamp), ``StoreFullError`` if the store holds its most."""
        start = datetime.fromtimestamp(since, UTC)
        with self._connection() as connection:
            sent, oldest = connection.execute(
                select(func.count(), func.min(feedback.c.created_at)).where(
                    feedback.c.client_hash == client_hash, feedback.c.created_at >= start
                )
            ).one()
            items, size = connection.execute(
                select(func.count(), func.coalesce(func.sum(feedback.c.photo_bytes), 0))
            ).one()
        if sent >= limits.per_hour:
            wait = (utc(oldest) - start).total_seconds() if oldest else 60
            raise RateLimitedError(
                f"Thank you: that is {limits.per_hour} corrections within an hour, the most "
                "one person may send. Please send more later.",
                retry_after=max(1, int(wait) + 1),
            )
        full = items >= limits.max_items or size >= limits.max_bytes
        if full and not self._full:
            log.warning(
                "The feedback store is full (%d items, %d MB; FEEDBACK_MAX_ITEMS=%d, "
                "FEEDBACK_MAX_MB=%d): export and purge to take more",
                items,
                size // 2**20,
                limits.max_items,
                limits.max_bytes // 2**20,
            )
        self._full = full
        if full:
            raise StoreFullError(
                "The feedback store is full: it takes no more corrections for now.",
                retry_after=3600,
            )

    def add(self, correction: Correction, limits: Limits) -> int:
        """Store one correction; its id."""
        with self._connection(writing=True) as connection:
            result = connection.execute(
                feedback.insert().values(
                    created_at=datetime.now(UTC),
                    model_name=correction.model_name,
                    model_sha256=correction.model_sha256,
                    answered=[[label, p] for label, p in correction.answered],
                    label=correction.label,
                    known=correction.known,
                    predicted=correction.predicted,
                    photo=correction.photo,
                    photo_bytes=len(correction.photo),
                    client_hash=correction.client_hash,
                    request_id=correction.request_id,
                )
            )
            (identifier,) = result.inserted_primary_key or (None,)
        assert identifier is not None
        return int(identifier)

    def last_id(self) -> int:
        """The newest row's id (0 if none): an export covers the rows up to here."""
        with self._connection() as connection:
            return connection.scalar(select(func.coalesce(func.max(feedback.c.id), 0)))

    def labels(
        self, since: datetime | None = None, only_wrong: bool = False, upto: int | None = None
    ) -> list[str]:
        """The distinct labels of the rows ``rows`` gives."""
        query = select(feedback.c.label).distinct()
        with self._connection() as connection:
            return list(connection.scalars(filtered(query, since, only_wrong, upto)))

    def rows(
        self, since: datetime | None = None, only_wrong: bool = False, upto: int | None = None
    ) -> Iterator[Row]:
        """Every row from ``since`` (the wrong answers only, with ``only_wrong``; up to the id
        ``upto``), oldest first, fetched ``EXPORT_BATCH`` at a time (a server-side cursor on
        PostgreSQL)."""
        columns = [
            feedback.c.id,
            feedback.c.created_at,
            feedback.c.label,
            feedback.c.predicted,
            feedback.c.model_name,
            feedback.c.model_sha256,
            feedback.c.photo,
        ]
        query = filtered(select(*columns), since, only_wrong, upto).order_by(feedback.c.id)
        with self._connection() as connection:
            yield from connection.execution_options(yield_per=EXPORT_BATCH).execute(query)

    def purge(self, before: datetime) -> int:
        """Delete every row older than ``before``; how many."""
        with self._connection(writing=True) as connection:
            return connection.execute(
                delete(feedback).where(feedback.c.created_at < before)
            ).rowcount


def filtered(query: Any, since: datetime | None, only_wrong: bool, upto: int | None) -> Any:
    if since is not None:
        query = query.where(feedback.c.created_at >= since)
    if only_wrong:
        query = query.where(
            or_(feedback.c.predicted.is_(None), feedback.c.predicted != feedback.c.label)
        )
    if upto is not None:
        query = query.where(feedback.c.id <= upto)
    return query


def utc(moment: datetime) -> datetime:
    """SQLite hands back the naive UTC time it was given; PostgreSQL an aware one."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def sqlstate(error: DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None)


def first_line(error: BaseException) -> str:
    """The driver's own words, without the statement and its parameters (a photo's bytes)."""
    cause = error.orig if isinstance(error, DBAPIError) else error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"
