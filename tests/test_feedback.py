"""Feedback in process: what a correction stores, its limits, the schema's migrations, the export.

Every test of the store runs twice, on SQLite (the default) and on a real
PostgreSQL (``tests.support.postgres``): the same code, the same answers.
The app's own bars (restarts, outages, two instances) are in
``test_feedback_durability.py``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import subprocess
import sys
import unicodedata
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import insert, select, text, update

from classifier.assets import ROOT
from classifier.model import Classifier
from service.feedback import (
    Correction,
    Feedback,
    FeedbackOffError,
    LabelRefusedError,
    Limits,
    RateLimitedError,
    StoreDownError,
    StoreFullError,
    kept_key,
    off_reason,
)
from service.feedback.__main__ import main as feedback_command
from service.feedback.export import folder_names
from service.feedback.schema import VERSION, feedback, migrate, schema_version
from service.feedback.store import Store, engine_url
from service.settings import Settings, SettingsError
from tests.support.harness import free_port
from tests.support.photos import CAT_PHOTO, COFFEE_PHOTO
from tests.support.postgres import PostgresCluster, postgres_cluster

ROOMY = Limits(per_hour=1000, max_items=100_000, max_bytes=2**40)
SALT = b"a salt for the tests"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    with postgres_cluster() as running:
        yield running


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store: an SQLite file, or a fresh database on the test cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'feedback.sqlite3'}"
    return request.getfixturevalue("cluster").new_database()


@pytest.fixture(scope="module")
def classifier(model_path: Path) -> Classifier:
    return Classifier(model_path)


def service(classifier: Classifier, url: str, limits: Limits = ROOMY, hops: int = 0) -> Feedback:
    return Feedback(classifier, url, limits, SALT, forwarded_hops=hops)


def stored(url: str, identifier: int) -> dict:
    store = Store(url)
    with store.engine.connect() as connection:
        row = connection.execute(select(feedback).where(feedback.c.id == identifier)).one()
    store.engine.dispose()
    return row._asdict()


def phone_photo(path: Path) -> Path:
    """A 2000 x 1500 JPEG shot sideways (EXIF orientation 6) with a comment and a GPS tag."""
    image = Image.open(CAT_PHOTO).convert("RGB").resize((2000, 1500))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to view
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0)}  # where it was taken
    image.save(path, "JPEG", exif=exif, comment=b"a secret in the upload")
    return path


# --- one correction -----------------------------------------------------------


def test_a_correction_stores_our_jpeg_the_answer_and_no_address(
    classifier: Classifier, database_url: str, tmp_path: Path
) -> None:
    upload = phone_photo(tmp_path / "phone.jpg")
    sent = service(classifier, database_url)
    before = datetime.now(UTC)
    identifier = sent.send(upload, "golden retriever", "203.0.113.7", request_id="f00d-1234")
    row = stored(database_url, identifier)

    photo = Image.open(io.BytesIO(row["photo"]))
    assert photo.format == "JPEG"
    assert photo.size == (480, 640)  # upright: the EXIF rotation applied, then 640 a side
    assert not photo.getexif()
    assert "comment" not in photo.info
    assert row["photo"] != upload.read_bytes()
    assert row["photo_bytes"] == len(row["photo"])
    answered = classifier.classify(upload)
    assert row["answered"] == [[p.label, pytest.approx(p.probability)] for p in answered]
    assert row["predicted"] == answered[0].label
    assert (row["label"], row["known"]) == ("golden retriever", True)
    assert row["model_name"] == classifier.metadata.name
    assert row["model_sha256"] == classifier.metadata.sha256
    assert row["request_id"] == "f00d-1234"
    assert "203.0.113.7" not in str(row.values())
    assert row["client_hash"] == sent.client_hash("203.0.113.7") != sent.client_hash("203.0.113.8")
    created = (
        row["created_at"] if row["created_at"].tzinfo else row["created_at"].replace(tzinfo=UTC)
    )
    assert before - timedelta(seconds=1) <= created <= datetime.now(UTC) + timedelta(seconds=1)


def test_the_pages_answer_is_stored_without_classifying_again(
    classifier: Classifier, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("classified again")

    monkeypatch.setattr(classifier, "predict_explained", no_model_run)
    answered = {"tabby": 0.7, "tiger cat": 0.2, "Egyptian cat": 0.1}
    identifier = service(classifier, database_url).send(
        COFFEE_PHOTO, "my own class", "198.51.100.1", answered=answered
    )
    row = stored(database_url, identifier)
    assert row["answered"] == [["tabby", 0.7], ["tiger cat", 0.2], ["Egyptian cat", 0.1]]
    assert (row["predicted"], row["label"], row["known"]) == ("tabby", "my own class", False)
    assert max(Image.open(io.BytesIO(row["photo"])).size) <= 640


def refused_labels() -> Iterator[tuple[str, str]]:
    """Every kind of label that is refused: empty, too long, each control character."""
    yield "empty", ""
    yield "blank", " \t "
    yield "101 characters", "x" * 101
    yield "long", "dog " * 1000
    for code in range(0x110000):
        if unicodedata.category(chr(code)) in ("Cc", "Zl", "Zp") and chr(code) not in " \t":
            yield f"U+{code:04X}", f"dog{chr(code)}cat"


@pytest.mark.parametrize(("kind", "label"), list(refused_labels()), ids=lambda x: x[:20])
def test_refused_labels_are_a_422_before_any_decode(
    classifier: Classifier, kind: str, label: str
) -> None:
    nowhere = "postgresql://nobody@127.0.0.1:1/none?sslmode=disable"  # never reached
    with pytest.raises(LabelRefusedError) as refused:
        service(classifier, nowhere).send(b"not even an image", label, "client")
    assert refused.value.status == 422
    with pytest.raises(LabelRefusedError):
        service(classifier, nowhere).send(b"x", "dog", "client", predicted=label or "\0")


@pytest.mark.parametrize(
    "label", ["x" * 100, "café", "Hund 🐕", "a/b", "..", "<script>", "'; DROP TABLE feedback"]
)
def test_any_printable_label_of_at_most_100_characters_is_kept_as_sent(
    classifier: Classifier, tmp_path: Path, label: str
) -> None:
    url = f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    identifier = service(classifier, url).send(CAT_PHOTO, label, "client")
    assert stored(url, identifier)["label"] == label


# --- the limits ---------------------------------------------------------------


def test_a_client_past_the_rate_gets_429_and_another_is_served(
    classifier: Classifier, database_url: str
) -> None:
    sent = service(classifier, database_url, Limits(3, 1000, 2**30))
    for _ in range(3):
        sent.send(CAT_PHOTO, "tabby", "192.0.2.1")
    with pytest.raises(RateLimitedError) as limited:
        sent.send(CAT_PHOTO, "tabby", "192.0.2.1")
    assert limited.value.status == 429
    assert 1 <= int(limited.value.headers["Retry-After"]) <= 3601
    assert sent.send(CAT_PHOTO, "tabby", "192.0.2.2") > 0


def test_a_full_store_is_a_507_logged_once(
    classifier: Classifier, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    sent = service(classifier, database_url, Limits(1000, 2, 2**30))
    sent.send(CAT_PHOTO, "tabby", "a")
    sent.send(CAT_PHOTO, "tabby", "b")
    for client in "cde":
        with pytest.raises(StoreFullError) as full, caplog.at_level(logging.WARNING):
            sent.send(CAT_PHOTO, "tabby", client)
        assert full.value.status == 507
        assert not full.value.server_fault
    assert len([r for r in caplog.records if "store is full" in r.getMessage()]) == 1


def test_the_megabyte_cap_counts_the_stored_photos(classifier: Classifier, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    sent = service(classifier, url, Limits(1000, 1000, max_bytes=1))
    sent.send(CAT_PHOTO, "tabby", "a")
    with pytest.raises(StoreFullError):
        sent.send(CAT_PHOTO, "tabby", "a")


def test_a_database_that_cannot_be_reached_is_a_503_with_retry_after(
    classifier: Classifier, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"postgresql://user:hunter2@127.0.0.1:{free_port()}/feedback?sslmode=disable"
    with pytest.raises(StoreDownError) as down, caplog.at_level(logging.WARNING):
        service(classifier, url).send(CAT_PHOTO, "tabby", "a")
    assert down.value.status == 503
    assert down.value.headers["Retry-After"] == "30"
    assert "hunter2" not in caplog.text
    assert "cannot be reached" in str(down.value)


def test_a_heroku_database_over_its_plan_is_full_not_down(cluster: PostgresCluster) -> None:
    """Over its storage, Heroku Postgres leaves the app a credential that may only read,
    delete and truncate: a write is refused as a full store (507), not an outage."""
    url = cluster.new_database()
    owner = Store(url)
    owner.add(correction("before"), ROOMY)
    role = f"restricted_{uuid.uuid4().hex[:8]}"
    with owner.engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        connection.exec_driver_sql(
            f"GRANT SELECT, DELETE, TRUNCATE ON feedback, schema_version TO {role}"
        )
    restricted = Store(url.replace("//postgres@", f"//{role}@"))
    with pytest.raises(StoreFullError) as full:
        restricted.add(correction("after"), ROOMY)
    assert full.value.status == 507
    assert restricted.purge(datetime.now(UTC) + timedelta(days=1)) == 1  # what it may do
    for store in (owner, restricted):
        store.engine.dispose()


def test_feedback_off_is_off_with_how_to_turn_it_on(classifier: Classifier, tmp_path: Path) -> None:
    assert off_reason(True, None, None) is None
    assert off_reason(True, "postgres://h/db", "web.1") is None
    assert "FEEDBACK=off" in str(off_reason(False, None, None))
    on_heroku = off_reason(True, None, "web.1")
    assert "heroku addons:create heroku-postgresql:essential-0" in str(on_heroku)
    off = Feedback.from_settings(classifier, Settings(dyno="web.1", data_dir=tmp_path))
    assert not off.enabled
    assert off.off_message == on_heroku
    with pytest.raises(FeedbackOffError) as refused:
        off.send(CAT_PHOTO, "tabby", "a")
    assert refused.value.status == 404
    assert not (tmp_path / "feedback.sqlite3").exists()


def test_a_data_folder_that_cannot_be_written_is_a_503_and_a_log_line(
    classifier: Classifier, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "not a folder").write_text("")
    settings = Settings(data_dir=tmp_path / "not a folder" / "data")
    sent = Feedback.from_settings(classifier, settings)  # at start: nothing touched
    assert sent.enabled
    with pytest.raises(StoreDownError) as down, caplog.at_level(logging.ERROR):
        sent.send(CAT_PHOTO, "tabby", "a")
    assert down.value.status == 503
    assert "set DATABASE_URL, or DATA_DIR to a folder" in caplog.text


def test_instances_making_the_sqlite_salt_at_once_agree_on_one(tmp_path: Path) -> None:
    path = tmp_path / "data" / "feedback.salt"
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: kept_key(path), range(8)))
    assert len(keys) == 1
    assert len(keys.pop()) == 64
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["feedback.salt"]


def test_a_database_url_of_another_kind_stops_the_app_at_start(classifier: Classifier) -> None:
    settings = Settings(database_url="mysql://user:hunter2@db.example/feedback")
    with pytest.raises(SettingsError) as refused:
        Feedback.from_settings(classifier, settings)
    assert refused.value.exit_code == 2
    assert "'mysql'" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_heroku_urls_become_psycopg_with_ssl_required() -> None:
    url = engine_url("postgres://u:p@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d8f")
    assert url.drivername == "postgresql+psycopg"
    assert url.query["sslmode"] == "require"
    assert url.password == "p"
    assert engine_url("postgresql://u@localhost/d?sslmode=disable").query["sslmode"] == "disable"
    with pytest.raises(ValueError, match="mysql"):
        engine_url("mysql://u@h/d")


# --- over REST ----------------------------------------------------------------


@pytest.fixture
def rest(classifier: Classifier, tmp_path: Path) -> Iterator[TestClient]:
    from service.api import build_api

    sent = service(classifier, f"sqlite:///{tmp_path / 'f.sqlite3'}", Limits(2, 100, 2**30), 1)
    with TestClient(build_api(classifier, feedback=sent)) as client:
        yield client


def post_feedback(client: TestClient, photo: Path, who: str = "192.0.2.9", **fields: str):
    with photo.open("rb") as image:
        return client.post(
            "feedback",
            files={"file": (photo.name, image)},
            data=fields,
            headers={"X-Forwarded-For": who},
        )


def test_rest_answers_201_then_429_for_that_client_only(rest: TestClient) -> None:
    first = post_feedback(rest, CAT_PHOTO, label="tabby", predicted="tiger cat", request_id="ab")
    assert first.status_code == 201
    assert set(first.json()) == {"id"}
    assert post_feedback(rest, CAT_PHOTO, label="tabby").status_code == 201
    limited = post_feedback(rest, CAT_PHOTO, label="tabby")
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert set(limited.json()) == {"error"}
    assert post_feedback(rest, CAT_PHOTO, "192.0.2.10", label="tabby").status_code == 201


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        ({}, 422, "label"),
        ({"label": "x" * 101}, 422, "at most 100"),
        ({"label": "dog\ncat"}, 422, "control"),
        ({"label": "dog", "request_id": "not an id!"}, 422, "request_id"),
        ({"label": "dog", "extra": "1", "more": "2"}, 400, "form"),
    ],
)
def test_rest_refuses_bad_fields_in_the_error_shape(
    rest: TestClient, fields: dict[str, str], status: int, words: str
) -> None:
    response = post_feedback(rest, CAT_PHOTO, **fields)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert words in response.json()["error"]


def test_rest_refuses_what_classify_refuses(rest: TestClient) -> None:
    no_file = rest.post("feedback", data={"label": "dog"})
    assert no_file.status_code == 400
    assert "`file`" in no_file.json()["error"]
    not_image = rest.post("feedback", files={"file": ("a.jpg", b"text")}, data={"label": "d"})
    assert not_image.status_code == 415
    raw = rest.post(
        "feedback", content=CAT_PHOTO.read_bytes(), headers={"Content-Type": "image/png"}
    )
    assert raw.status_code == 400
    label_as_file = rest.post(
        "feedback", files={"file": CAT_PHOTO.open("rb"), "label": ("l.txt", b"dog")}
    )
    assert label_as_file.status_code in (400, 422)


def test_rest_feedback_is_in_the_openapi_with_the_error_shape(rest: TestClient) -> None:
    operation = rest.get("openapi.json").json()["paths"]["/feedback"]["post"]
    assert {"201", "400", "413", "415", "422", "429", "503", "507"} <= set(operation["responses"])
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file", "label"]
    assert form["properties"]["label"]["maxLength"] == 100


def test_feedback_off_removes_the_route(classifier: Classifier, tmp_path: Path) -> None:
    from service.api import build_api

    off = Feedback.from_settings(classifier, Settings(feedback=False, data_dir=tmp_path))
    with TestClient(build_api(classifier, feedback=off)) as client:
        response = post_feedback(client, CAT_PHOTO, label="tabby")
        assert response.status_code == 404
        assert set(response.json()) == {"error"}
        assert "/feedback" not in client.get("openapi.json").json()["paths"]


def test_the_store_is_imported_only_when_feedback_is_first_sent() -> None:
    """Idle memory: an app nobody corrects never imports SQLAlchemy or a database driver."""
    script = (
        "import sys\n"
        "import service.api, service.feedback, service.feedback.api, service.settings\n"
        "heavy = [m for m in ('sqlalchemy', 'psycopg', 'sqlite3') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True)


# --- the schema ---------------------------------------------------------------

V1_INSERT = text(
    "INSERT INTO feedback (created_at, model_name, model_sha256, answered, label, known, "
    "predicted, photo, client_hash, request_id) VALUES (:created_at, 'InceptionV3', :sha, "
    "'[[\"tabby\", 0.5]]', :label, :known, 'tabby', :photo, 'c0ffee', NULL)"
)


def test_a_version_1_database_is_migrated_with_its_rows(database_url: str) -> None:
    store = Store(database_url)
    photos = [bytes([n]) * (100 + n) for n in range(5)]
    with store.engine.connect() as connection:
        connection = connection.execution_options(writing=True)
        with connection.begin():
            migrate(connection, upto=1)
            for n, photo in enumerate(photos):
                values = {"label": f"label {n}", "known": n % 2 == 0, "photo": photo}
                connection.execute(
                    V1_INSERT, {**values, "created_at": datetime.now(UTC), "sha": "0" * 64}
                )
    identifier = store.add(correction("after"), ROOMY)  # the first use migrates
    with store.engine.connect() as connection:
        assert connection.scalar(select(schema_version.c.version)) == VERSION
        rows = connection.execute(select(feedback).order_by(feedback.c.id)).all()
    assert [r.label for r in rows] == [f"label {n}" for n in range(5)] + ["after"]
    assert [r.photo for r in rows[:5]] == photos
    assert [r.photo_bytes for r in rows[:5]] == [len(p) for p in photos]
    assert [r.known for r in rows[:5]] == [True, False, True, False, True]
    assert rows[-1].id == identifier
    store.engine.dispose()


def test_a_database_newer_than_the_app_is_refused_not_touched(database_url: str) -> None:
    store = Store(database_url)
    store.add(correction("kept"), ROOMY)
    with store.engine.begin() as connection:
        connection.execute(update(schema_version).values(version=VERSION + 1))
    with pytest.raises(StoreDownError):
        Store(database_url).add(correction("refused"), ROOMY)
    with store.engine.connect() as connection:
        assert connection.scalars(select(feedback.c.label)).all() == ["kept"]
    store.engine.dispose()


def test_instances_starting_at_once_create_the_schema_once(database_url: str) -> None:
    stores = [Store(database_url) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda s: s.add(correction("at once"), ROOMY), stores))
    assert len(set(ids)) == 4
    for store in stores:
        store.engine.dispose()


# --- export and purge ---------------------------------------------------------


def correction(
    label: str, predicted: str | None = "tabby", photo: bytes | None = None
) -> Correction:
    return Correction(
        model_name="InceptionV3",
        model_sha256="0" * 64,
        answered=[("tabby", 0.5), ("tiger cat", 0.25)],
        label=label,
        known=False,
        predicted=predicted,
        photo=photo if photo is not None else tiny_jpeg(label),
        client_hash="c0ffee",
        request_id=None,
    )


def tiny_jpeg(seed: str) -> bytes:
    colour = tuple(hash(seed) >> shift & 255 for shift in (0, 8, 16))
    encoded = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(encoded, "JPEG")
    return encoded.getvalue()


def export(url: str, out: Path, *args: str, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("DATABASE_URL", url)
    return feedback_command(["export", str(out), *args])


def exported(out: Path) -> list[dict[str, str]]:
    with (out / "feedback.csv").open(newline="") as table:
        return list(csv.DictReader(table))


def test_export_writes_a_folder_per_label_and_the_csv(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(database_url)
    labels = ["tabby", "golden retriever", "golden retriever", "my own class", "tabby"]
    ids = [store.add(correction(label), ROOMY) for label in labels]
    out = tmp_path / "export"
    assert export(database_url, out, monkeypatch=monkeypatch) == 0

    rows = exported(out)
    assert [int(r["id"]) for r in rows] == ids
    assert list(rows[0]) == ["id", "time", "file", "label", "predicted", "model", "model_sha256"]
    for row, label in zip(rows, labels, strict=True):
        assert row["label"] == label
        assert row["predicted"] == "tabby"
        assert row["model"] == "InceptionV3"
        assert datetime.fromisoformat(row["time"]).tzinfo is not None
        assert (out / row["file"]).read_bytes() == tiny_jpeg(label)
        assert Path(row["file"]).name == f"{row['id']}.jpg"
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["golden retriever", "my own class", "tabby"]
    assert sorted(p.name for p in (out / "tabby").iterdir()) == sorted(
        f"{i}.jpg" for i, label in zip(ids, labels, strict=True) if label == "tabby"
    )
    store.engine.dispose()


def test_export_since_a_date_and_only_the_wrong_answers(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(database_url)
    old = store.add(correction("old"), ROOMY)
    right = store.add(correction("tabby", predicted="tabby"), ROOMY)
    wrong = store.add(correction("dog", predicted="tabby"), ROOMY)
    unknown = store.add(correction("dog", predicted=None), ROOMY)
    with store.engine.begin() as connection:
        connection.execute(
            update(feedback)
            .where(feedback.c.id == old)
            .values(created_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
    assert (
        export(database_url, tmp_path / "a", "--since", "2021-01-01", monkeypatch=monkeypatch) == 0
    )
    assert [int(r["id"]) for r in exported(tmp_path / "a")] == [right, wrong, unknown]
    assert export(database_url, tmp_path / "b", "--only-wrong", monkeypatch=monkeypatch) == 0
    assert [int(r["id"]) for r in exported(tmp_path / "b")] == [old, wrong, unknown]

    assert feedback_command(["purge", "--before", "2021-01-01"]) == 0
    assert export(database_url, tmp_path / "c", monkeypatch=monkeypatch) == 0
    assert [int(r["id"]) for r in exported(tmp_path / "c")] == [right, wrong, unknown]
    store.engine.dispose()


LOOKALIKES = [
    "Crane", "crane", "CRANE",  # case: one folder on macOS' and Windows' file systems
    "a/b", "a_b", "a\\b", "a:b",  # separators and what they would be replaced by
    "caf\u00e9", "cafe\u0301",  # one word, composed and decomposed (NFC, NFD)
    ".", "..", "...", " x", "x ", "CON", "nul", "-rf",
    "ﬁsh", "fish",  # a ligature and its letters (NFKC folds them)
]  # fmt: skip


def test_folder_names_are_safe_and_never_merge_two_labels() -> None:
    folders = folder_names(LOOKALIKES)
    assert set(folders) == set(LOOKALIKES)
    folded = {unicodedata.normalize("NFKC", f).casefold() for f in folders.values()}
    assert len(folded) == len(LOOKALIKES)
    for label, folder in folders.items():
        assert folder not in (".", "..")
        assert not folder.startswith((".", "-", " "))
        assert not any(c in folder for c in '/\\:*?"<>|')
        assert folder == folder.strip()
        assert 0 < len(folder.encode()) <= 120, label
        assert folder.casefold() not in ("con", "nul")
    assert folder_names(["golden retriever"]) == {"golden retriever": "golden retriever"}
    assert folder_names(list(reversed(LOOKALIKES))) == folders  # the order does not matter


def test_export_keeps_lookalike_labels_apart(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(database_url)
    ids = {label: store.add(correction(label), ROOMY) for label in LOOKALIKES}
    assert export(database_url, tmp_path / "out", monkeypatch=monkeypatch) == 0
    rows = {r["label"]: r for r in exported(tmp_path / "out")}
    assert set(rows) == set(LOOKALIKES)
    folders = {Path(r["file"]).parent.name for r in rows.values()}
    assert len(folders) == len(LOOKALIKES)
    for label, identifier in ids.items():
        assert (tmp_path / "out" / rows[label]["file"]).read_bytes() == tiny_jpeg(label)
        assert rows[label]["id"] == str(identifier)
    store.engine.dispose()


def test_export_streams_in_bounded_memory(database_url: str, tmp_path: Path) -> None:
    """The exporter's peak does not grow with the store: 200 photos or 2,000 (40 MB) alike."""
    peaks = []
    for count, name in ((200, "small"), (2000, "large")):
        url = database_url if name == "large" else _another(database_url, tmp_path)
        store = Store(url)
        store.add(correction("warm"), ROOMY)
        with store.engine.begin() as connection:
            for first in range(0, count, 500):
                connection.execute(
                    insert(feedback),
                    [_bulk_row(n) for n in range(first, min(count, first + 500))],
                )
        store.engine.dispose()
        peaks.append(_export_peak(url, tmp_path / name))
        assert len(list((tmp_path / name).glob("*/*.jpg"))) == count + 1
    small, large = peaks
    assert large - small < 12 * 2**20, f"{small / 2**20:.0f} MB, then {large / 2**20:.0f} MB"


def _another(database_url: str, tmp_path: Path) -> str:
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'small.sqlite3'}"
    host, _, _ = database_url.rpartition("/")
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("CREATE DATABASE small_export")
    return f"{host}/small_export?sslmode=disable"


def _bulk_row(n: int) -> dict:
    photo = os.urandom(20 * 1024)  # incompressible, as a JPEG is
    return {
        "created_at": datetime.now(UTC),
        "model_name": "InceptionV3",
        "model_sha256": "0" * 64,
        "answered": [["tabby", 0.5]],
        "label": f"class {n % 10}",
        "known": False,
        "predicted": "tabby",
        "photo": photo,
        "photo_bytes": len(photo),
        "client_hash": "c0ffee",
        "request_id": None,
    }


EXPORT_PEAK = """
import sys
from pathlib import Path
from service.feedback.__main__ import main

Path("/proc/self/clear_refs").write_text("5")  # the peak from here on: the export's
code = main(["export", sys.argv[1]])
print(int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) * 1024)
sys.exit(code)
"""


def _export_peak(url: str, out: Path) -> int:
    """The peak resident memory of ``python -m service.feedback export`` over ``url``, from
    the command's start (the imports before it are the same whatever the store holds)."""
    exported = subprocess.run(
        [sys.executable, "-c", EXPORT_PEAK, str(out)],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(exported.stdout.split()[-1])


def test_command_errors_are_one_line_and_an_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://u:hunter2@127.0.0.1:{free_port()}/d")
    assert feedback_command(["export", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ")
    assert error.count("\n") == 1
    assert "hunter2" not in error
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "empty"))
    assert feedback_command(["export", str(tmp_path / "out")]) == 1
    assert "no feedback" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        feedback_command(["purge", "--before", "last tuesday"])
    assert usage.value.code == 2
