"""Start-up: from launching the Procfile's command to the first prediction over HTTP.

A Heroku dyno restarts at least daily and on every deploy; until the first
answer the user waits. The clock starts before ``bash -c 'source setup.sh &&
python app.py'`` is launched and stops when gradio_client has the cat photo's
top 5. Our page and the Keras page take turns, a few times each.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    APPS,
    app_options,
    classify_over_http,
    connect,
    models,
    report,
    serving,
)
from tests.support.photos import CAT_PHOTO


def first_prediction(
    model: Path, script: str, log: Path, env: dict[str, str]
) -> tuple[float, float]:
    """Seconds from launch until the page answers, and until its first prediction."""
    with serving(model, log, script, env, watch_memory=False) as server:
        client = connect(server.url)
        try:
            classify_over_http(client, CAT_PHOTO)
            answered = time.perf_counter() - server.launched
        finally:
            client.close()
        return server.ready_after, answered


def main() -> None:
    arguments = app_options(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=3, help="launches of each page")
    args = arguments.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="startup-") as folder:
        for model in models(args):
            runs: dict[str, list[tuple[float, float]]] = {app: [] for app in APPS}
            for _ in range(args.repeats):
                for app, script in APPS.items():
                    log = Path(folder) / "app.log"
                    runs[app].append(first_prediction(model, script, log, dict(args.env)))
            medians = {app: statistics.median(s for _, s in times) for app, times in runs.items()}
            for app, times in runs.items():
                rows.append(
                    {
                        "model": model.name,
                        "page": app,
                        "serving_s": statistics.median(s for s, _ in times),
                        "first_prediction_s": medians[app],
                        "x_keras": medians[app] / medians["keras"],
                        "runs_s": " ".join(f"{s:.1f}" for _, s in times),
                    }
                )
    report(args, "startup", {f"Launch to first prediction (median of {args.repeats})": rows})


if __name__ == "__main__":
    main()
