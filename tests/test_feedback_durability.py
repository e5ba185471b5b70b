"""Feedback on the app the Procfile starts: kept across restarts, through outages, nothing lost.

The issue's bars, each a test: 20 held-out photos stored on a real
PostgreSQL survive a restart and export as a training set (and the same
on SQLite, without ``DATABASE_URL``); a database that is down answers 503
while classification goes on, and is used again once back, without a
restart; one client past the rate gets 429 while another is served. The
slow tier sends bursts through two instances behind HAProxy: every
acknowledged correction is in the database, when an instance is killed
mid-burst and when the database restarts mid-burst.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from classifier.assets import ROOT
from service.feedback.schema import feedback
from service.feedback.store import Store
from tests.support.harness import balanced, classify, serving, wait_for
from tests.support.photos import CAT_PHOTO, COFFEE_PHOTO, imagenet_sample_photos
from tests.support.postgres import PostgresCluster, postgres_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    with postgres_cluster() as running:
        yield running


def send(http: httpx.Client, photo: Path, label: str, who: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": who} if who else {}
    with photo.open("rb") as image:
        return http.post(
            "feedback", files={"file": (photo.name, image)}, data={"label": label}, headers=headers
        )


def held_out_photos(folder: Path) -> list[tuple[Path, str]]:
    """20 photos and their labels: the ImageNet sample's last 20, else 20 of our own."""
    try:
        return [
            (p, p.stem.split("_", 1)[1].replace("_", " ")) for p in imagenet_sample_photos()[-20:]
        ]
    except pytest.skip.Exception:
        photos = []
        for n in range(20):
            source, label = (CAT_PHOTO, "tabby") if n % 2 else (COFFEE_PHOTO, "espresso")
            path = folder / f"{label}-{n}.jpg"
            Image.open(source).convert("RGB").rotate(n * 7, expand=True).resize(
                (1200 + n * 10, 900)
            ).save(path)
            photos.append((path, label))
        return photos


def export(out: Path, **env: str) -> list[dict[str, str]]:
    """``python -m service.feedback export out`` as a user runs it; the rows of its CSV."""
    subprocess.run(
        [sys.executable, "-m", "service.feedback", "export", str(out)],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    with (out / "feedback.csv").open(newline="") as table:
        return list(csv.DictReader(table))


@pytest.mark.parametrize("store", ["postgresql", "sqlite"])
def test_twenty_photos_survive_a_restart_and_export_as_a_training_set(
    store: str, model_path: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if store == "postgresql":
        env = {"DATABASE_URL": request.getfixturevalue("cluster").new_database()}
    else:
        env = {"DATA_DIR": str(tmp_path / "data")}  # no DATABASE_URL: `make run`'s SQLite
    photos = held_out_photos(tmp_path)
    with (
        serving(model_path, tmp_path / "before.log", **env) as app,
        httpx.Client(base_url=app.url, timeout=120) as http,
    ):
        answers = [send(http, photo, label) for photo, label in photos]
    assert [a.status_code for a in answers] == [201] * 20, answers[0].text
    with serving(model_path, tmp_path / "after.log", **env):  # restarted: a new process
        rows = export(tmp_path / "export", **env)

    assert sorted(int(r["id"]) for r in rows) == sorted(a.json()["id"] for a in answers)
    assert sorted(r["label"] for r in rows) == sorted(label for _, label in photos)
    labels = {label for _, label in photos}
    folders = [p for p in (tmp_path / "export").iterdir() if p.is_dir()]
    assert len(folders) == len(labels)
    for row in rows:
        with Image.open(tmp_path / "export" / row["file"]) as photo:
            assert photo.format == "JPEG"
            assert max(photo.size) <= 640
    assert len(list((tmp_path / "export").glob("*/*.jpg"))) == 20


def test_a_database_down_gets_503_while_classification_goes_on_and_back_without_restart(
    cluster: PostgresCluster, model_path: Path, tmp_path: Path
) -> None:
    """The app starts with its database down, and later loses it again once it has used it;
    one client past the rate gets 429 while another is served."""
    url = cluster.new_database()
    cluster.stop()
    try:
        with (
            serving(
                model_path,
                tmp_path / "app.log",
                DATABASE_URL=url,
                FORWARDED_HOPS="1",
                FEEDBACK_RATE="3",
            ) as app,
            httpx.Client(base_url=app.url, timeout=120) as http,
        ):
            assert_down(http)
            cluster.start()
            assert send(http, CAT_PHOTO, "tabby", "192.0.2.1").status_code == 201
            cluster.stop()
            assert_down(http)
            cluster.start()
            assert send(http, CAT_PHOTO, "tabby", "192.0.2.1").status_code == 201

            assert send(http, CAT_PHOTO, "tabby", "192.0.2.1").status_code == 201
            limited = send(http, CAT_PHOTO, "tabby", "192.0.2.1")
            assert limited.status_code == 429
            assert int(limited.headers["retry-after"]) >= 1
            assert send(http, CAT_PHOTO, "tabby", "192.0.2.2").status_code == 201
    finally:
        cluster.start()


def assert_down(http: httpx.Client) -> None:
    assert classify(http, CAT_PHOTO).status_code == 200
    assert http.get("readyz").status_code == 200
    refused = send(http, CAT_PHOTO, "tabby", "192.0.2.9")
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "30"
    assert "try again" in refused.json()["error"]


# --- the slow tier: bursts through two instances --------------------------------

CLIENTS = 8
EACH = 50


class Burst:
    """8 clients sending 50 corrections each, as fast as they are answered; every answer kept.

    With ``retry``, a client sends a correction again after a 503 (a short pause rather than
    the 30 s ``Retry-After`` asks, to keep the test short) until it is stored.
    """

    def __init__(self, url: str, retry: bool = False) -> None:
        self.url = url
        self.retry = retry
        self.answers: list[tuple[str, int, dict[str, str], object]] = []
        self.lock = threading.Lock()

    def client(self, number: int) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as http:
            for n in range(EACH):
                label = f"burst {number} {n}"
                while self._answer(http, label) == 503 and self.retry:
                    time.sleep(0.05)

    def _answer(self, http: httpx.Client, label: str) -> int:
        try:
            response = send(http, CAT_PHOTO, label)
            json = response.headers.get("content-type") == "application/json"
            body = response.json() if json else response.text  # HAProxy's own 503 is HTML
            answer = (label, response.status_code, dict(response.headers), body)
        except httpx.TransportError as error:  # an instance killed under it
            answer = (label, 0, {}, repr(error))
        with self.lock:
            self.answers.append(answer)
        return answer[1]

    def run(self) -> None:
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(self.client, range(CLIENTS)))

    def acknowledged(self) -> dict[int, str]:
        return {body["id"]: label for label, status, _, body in self.answers if status == 201}

    def count(self, status: int | None = None) -> int:
        with self.lock:
            return len([a for a in self.answers if status is None or a[1] == status])


def stored_labels(url: str) -> dict[int, str]:
    store = Store(url)
    with store.engine.connect() as connection:
        rows = dict(connection.execute(select(feedback.c.id, feedback.c.label)).all())
    store.engine.dispose()
    return rows


@pytest.mark.slow
@pytest.mark.timeout(900)  # 400 classifications and more, on a shared machine
def test_a_burst_through_two_instances_stores_exactly_what_was_acknowledged(
    cluster: PostgresCluster, model_path: Path, tmp_path: Path
) -> None:
    url = cluster.new_database()
    with balanced(model_path, tmp_path, DATABASE_URL=url, FEEDBACK_RATE="10000") as balancer:
        burst = Burst(balancer.url)
        burst.run()
    assert [status for _, status, _, _ in burst.answers] == [201] * CLIENTS * EACH
    assert stored_labels(url) == burst.acknowledged()
    assert len(burst.acknowledged()) == CLIENTS * EACH


@pytest.mark.slow
@pytest.mark.timeout(900)  # 400 classifications and more, on a shared machine
def test_an_instance_killed_mid_burst_loses_nothing_it_acknowledged(
    cluster: PostgresCluster, model_path: Path, tmp_path: Path
) -> None:
    url = cluster.new_database()
    with balanced(model_path, tmp_path, DATABASE_URL=url, FEEDBACK_RATE="10000") as balancer:
        burst = Burst(balancer.url)
        with ThreadPoolExecutor(1) as background:
            sending = background.submit(burst.run)
            wait_for(lambda: burst.count() >= 100, timeout=300)
            victim = balancer.instances[0]
            os.killpg(victim.process.pid, 9)
            victim.process.wait()
            sending.result()  # what failed in the clients fails here
    acknowledged = burst.acknowledged()
    stored = stored_labels(url)
    assert 100 <= len(acknowledged) < CLIENTS * EACH
    assert {i: stored.get(i) for i in acknowledged} == acknowledged
    assert {status for _, status, _, _ in burst.answers} <= {201, 502, 503, 0}


@pytest.mark.slow
@pytest.mark.timeout(900)  # 400 classifications and more, on a shared machine
def test_a_database_restarted_mid_burst_is_503_then_stores_again(
    cluster: PostgresCluster, model_path: Path, tmp_path: Path
) -> None:
    url = cluster.new_database()
    with balanced(model_path, tmp_path, DATABASE_URL=url, FEEDBACK_RATE="10000") as balancer:
        burst = Burst(balancer.url, retry=True)
        with (
            ThreadPoolExecutor(1) as background,
            httpx.Client(base_url=balancer.url, timeout=120) as http,
        ):
            sending = background.submit(burst.run)
            try:
                wait_for(lambda: burst.count(201) >= 60, timeout=300)
                cluster.stop()
                wait_for(lambda: burst.count(503) >= 40, timeout=300)
                during = [classify(http, CAT_PHOTO).status_code for _ in range(10)]
            finally:
                cluster.start()
            sending.result()  # what failed in the clients fails here
            after = [classify(http, CAT_PHOTO).status_code for _ in range(10)]
    assert {status for _, status, _, _ in burst.answers} == {201, 503}
    assert all(h["retry-after"] == "30" for _, s, h, _ in burst.answers if s == 503)
    assert during + after == [200] * 20
    acknowledged = burst.acknowledged()
    assert sorted(acknowledged.values()) == sorted(
        f"burst {c} {n}" for c in range(CLIENTS) for n in range(EACH)
    )  # every correction stored once the database was back, without restarting the app
    stored = stored_labels(url)
    assert {i: stored.get(i) for i in acknowledged} == acknowledged
