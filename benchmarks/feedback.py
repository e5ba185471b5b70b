"""What the feedback store costs: installed size, and the app's memory before and after it is used.

The store (SQLAlchemy; psycopg and its bundled libpq for PostgreSQL) is
imported when the first correction is sent, never at start. Installed
size: the files of its packages in this environment, gzip-compressed as
Heroku counts a slug (``slug.py``'s method). Memory: the app's resident
memory after 5 classifications (the decode path warm), then after 5
corrections, with ``FEEDBACK=0``, on SQLite, and on a throwaway PostgreSQL
cluster where its binaries are installed: what the store adds is the
difference.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.common import MB, models, options, report, serving
from benchmarks.slug import compressed_size
from tests.support.harness import ProcessMemory, classify
from tests.support.photos import CAT_PHOTO
from tests.support.postgres import postgres_cluster

STORE_PACKAGES = ("sqlalchemy", "psycopg", "psycopg-binary")
ROUNDS = 5


def package_files(name: str) -> list[tuple[Path, str]]:
    """An installed package's files, as tar entries."""
    distribution = metadata.distribution(name)
    files = [Path(str(distribution.locate_file(file))) for file in distribution.files or []]
    return [(path, f"site-packages/{path.name}") for path in files if path.is_file()]


def installed_sizes() -> list[dict[str, Any]]:
    rows = []
    every: list[tuple[Path, str]] = []
    for name in STORE_PACKAGES:
        files = package_files(name)
        every += files
        compressed, raw = compressed_size(files)
        rows.append({"package": name, "compressed_mb": compressed, "installed_mb": raw})
    compressed, raw = compressed_size(every)
    rows.append({"package": "the store, in all", "compressed_mb": compressed, "installed_mb": raw})
    return rows


def memory_row(model: Path, folder: Path, store: str, env: dict[str, str]) -> dict[str, Any]:
    """Resident memory after classifications, then after corrections, of one app."""
    with (
        serving(model, folder / f"{store}.log", env=env) as app,
        httpx.Client(base_url=app.url, timeout=120) as http,
    ):
        memory = ProcessMemory(app.process.pid)
        for _ in range(ROUNDS):
            assert classify(http, CAT_PHOTO).status_code == 200
        before = memory.current
        for n in range(ROUNDS):
            with CAT_PHOTO.open("rb") as photo:
                sent = http.post("feedback", files={"file": photo}, data={"label": f"cat {n}"})
            assert sent.status_code == (404 if store == "off" else 201), sent.text
        after = memory.current
    return {
        "store": store,
        "classified_mb": before / MB,
        "corrected_mb": after / MB,
        "added_mb": (after - before) / MB,
    }


def main() -> None:
    args = options(__doc__.splitlines()[0]).parse_args()
    tables: dict[str, list[dict[str, Any]]] = {"installed size": installed_sizes()}
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stores: dict[str, dict[str, str]] = {
            "off": {"FEEDBACK": "0"},
            "sqlite": {"DATA_DIR": str(folder / "data")},
        }
        try:
            cluster = stack.enter_context(postgres_cluster())
            stores["postgresql"] = {"DATABASE_URL": cluster.new_database()}
        except pytest.skip.Exception as absent:
            print(f"PostgreSQL row skipped: {absent}")
        for model in models(args):
            tables[f"memory, {model.name}"] = [
                memory_row(model, folder, store, {**env, "FEEDBACK_RATE": "1000"})
                for store, env in stores.items()
            ]
    report(args, "feedback", tables)


if __name__ == "__main__":
    main()
