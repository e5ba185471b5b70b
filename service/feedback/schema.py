"""The feedback table and its migrations: a database keeps its rows across versions of the app.

``feedback`` is the table as this version of the app reads and writes it.
``MIGRATIONS[n - 1]`` takes a database from version ``n - 1`` to ``n``;
each is frozen once released (it spells out its own DDL rather than use
``feedback``, which moves on). ``migrate`` runs those a database lacks, in
one transaction, under a lock, so two instances that start at once neither
both create the table nor half-migrate it.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    select,
    text,
    update,
)

metadata = MetaData()

feedback = Table(
    "feedback",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, comment="UTC"),
    Column("model_name", String(200), nullable=False),
    Column("model_sha256", String(64), nullable=False),
    Column("answered", JSON, nullable=False, comment="the top-k: [[label, probability], ...]"),
    Column("label", String(100), nullable=False, comment="the right label, as sent"),
    Column("known", Boolean, nullable=False, comment="the label is one of the model's"),
    Column("predicted", String(100), comment="the answer this corrects"),
    Column("photo", LargeBinary, nullable=False, comment="our JPEG, at most 640 px a side"),
    Column("photo_bytes", Integer, nullable=False),
    Column("client_hash", String(64), nullable=False, comment="keyed hash, never the address"),
    Column("request_id", String(200), comment="the classification's X-Request-ID"),
    Index("feedback_created_at", "created_at"),
    Index("feedback_client_created_at", "client_hash", "created_at"),
)

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

POSTGRES_LOCK_KEY = 0x66656564  # "feed": one advisory lock for whoever migrates


def create_version_1(connection: Connection) -> None:
    """The first table: every correction with its photo."""
    v1 = MetaData()
    table = Table(
        "feedback",
        v1,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("model_name", String(200), nullable=False),
        Column("model_sha256", String(64), nullable=False),
        Column("answered", JSON, nullable=False),
        Column("label", String(100), nullable=False),
        Column("known", Boolean, nullable=False),
        Column("predicted", String(100)),
        Column("photo", LargeBinary, nullable=False),
        Column("client_hash", String(64), nullable=False),
        Column("request_id", String(200)),
        Index("feedback_created_at", "created_at"),
    )
    table.create(connection)


def add_photo_bytes(connection: Connection) -> None:
    """Version 2: each photo's size in a column, so the store's size cap is a sum of small
    integers rather than a read of every photo; and an index for the per-client rate."""
    connection.execute(
        text("ALTER TABLE feedback ADD COLUMN photo_bytes INTEGER NOT NULL DEFAULT 0")
    )
    connection.execute(update(feedback).values(photo_bytes=func.length(feedback.c.photo)))
    Index("feedback_client_created_at", feedback.c.client_hash, feedback.c.created_at).create(
        connection
    )


MIGRATIONS: list[Callable[[Connection], None]] = [create_version_1, add_photo_bytes]
VERSION = len(MIGRATIONS)


class SchemaTooNewError(Exception):
    """The database was migrated by a newer version of the app than this one."""


def migrate(connection: Connection, upto: int = VERSION) -> int:
    """Bring the database to version ``upto`` inside the caller's transaction; returns the
    version it was at."""
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(POSTGRES_LOCK_KEY)))
    schema_version.create(connection, checkfirst=True)
    found = connection.scalar(select(schema_version.c.version))
    if found is None:
        connection.execute(schema_version.insert().values(version=0))
        found = 0
    if found > VERSION:
        raise SchemaTooNewError(
            f"the feedback database is at schema version {found}, newer than this app's "
            f"{VERSION}: deploy the newer app"
        )
    for step in MIGRATIONS[found:upto]:
        step(connection)
    if upto > found:
        connection.execute(update(schema_version).values(version=upto))
    return found
