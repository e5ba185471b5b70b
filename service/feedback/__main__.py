"""``python -m service.feedback export OUT_DIR`` and ``purge --before DATE``.

The database is the app's: ``DATABASE_URL`` if set (``DATABASE_URL=$(heroku
config:get DATABASE_URL) python -m service.feedback export data/`` from a
laptop; ``heroku run`` works too, as only ``requirements.txt`` is needed),
else the SQLite file under ``DATA_DIR``. A failure is one line on stderr
and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from classifier.errors import ClassifierError
from service.feedback import sqlite_path


class NoStoreError(ClassifierError):
    """There is no SQLite store where the settings say."""


def moment(text: str) -> datetime:
    """A date or an ISO 8601 time; UTC unless it says otherwise."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date: use YYYY-MM-DD or an ISO 8601 time"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parser() -> argparse.ArgumentParser:
    commands = argparse.ArgumentParser(
        prog="python -m service.feedback",
        description="The corrections people sent: export them as a training set, or delete "
        "old ones. The database is DATABASE_URL's, else DATA_DIR's SQLite file.",
    )
    sub = commands.add_subparsers(dest="command", required=True)
    export = sub.add_parser(
        "export", help="OUT_DIR/<label>/<id>.jpg and OUT_DIR/feedback.csv, as "
        "keras.utils.image_dataset_from_directory(OUT_DIR) reads them",
    )  # fmt: skip
    export.add_argument("out", type=Path, metavar="OUT_DIR")
    export.add_argument("--since", type=moment, metavar="DATE", help="from this date (UTC) on")
    export.add_argument(
        "--only-wrong", action="store_true", help="only where the label is not the answer"
    )
    purge = sub.add_parser("purge", help="delete the corrections from before a date")
    purge.add_argument("--before", type=moment, metavar="DATE", required=True)
    return commands


def main(argv: list[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the one line below says what went wrong
    try:
        from service.feedback.export import export
        from service.feedback.store import Store
        from service.settings import load_settings

        store = Store(database_url(load_settings()), statement_timeout_s=None)
        try:
            if arguments.command == "export":
                count = export(store, arguments.out, arguments.since, arguments.only_wrong)
                print(f"Exported {count} corrections to {arguments.out}")
            else:
                count = store.purge(arguments.before)
                print(f"Deleted {count} corrections from before {arguments.before.isoformat()}")
        finally:
            store.engine.dispose()
    except ClassifierError as error:
        cause = f" ({first_line(error.__cause__)})" if error.__cause__ else ""
        print(f"error: {error}{cause}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        print(f"error: {error.strerror or error}: {error.filename}", file=sys.stderr)
        return 1
    return 0


def database_url(settings: object) -> str:
    """``DATABASE_URL``, else the SQLite file, which must exist (an export never creates one)."""
    from service.settings import Settings

    assert isinstance(settings, Settings)
    if settings.database_url:
        return settings.database_url.get_secret_value()
    path = sqlite_path(settings)
    if not path.is_file():
        raise NoStoreError(
            f"no feedback store at {path}: set DATABASE_URL, DATA_DIR or FEEDBACK_DB"
        )
    return f"sqlite:///{path}"


def first_line(error: BaseException) -> str:
    from service.feedback.store import first_line as driver_words

    return driver_words(error)


if __name__ == "__main__":
    sys.exit(main())
