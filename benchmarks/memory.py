"""Peak memory: the app's whole process tree, from launch through a burst of requests.

Heroku's basic dynos have 512 MB and count every process in the dyno. The
tree is sampled every 20 ms from the moment it is launched, so the peak
while the model loads is caught as well as the one under load. Our page
against the Keras page, on the same weights.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from common import (
    APPS,
    CAT_PHOTO,
    HEROKU_MEMORY_MB,
    MB,
    app_options,
    burst,
    models,
    report,
    serving,
)


def peak_memory(model: Path, script: str, log: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Peaks (MB) during start-up and during the burst, and what the burst gave."""
    with serving(model, log, script, dict(args.env)) as server:
        start_up = server.memory.take_peak()
        idle = server.memory.current / MB
        result = burst(server.url, CAT_PHOTO, args.requests, args.clients, args.time_limit)
        under_burst = server.memory.take_peak()
        samples = server.memory.samples
    summary = result.summary()
    return {
        "start_up_peak_MB": start_up,
        "idle_MB": idle,
        "burst_peak_MB": under_burst,
        "peak_MB": max(start_up, under_burst),
        "requests": summary["requests"],
        "errors": summary["errors"],
        "samples": samples,
    }


def main() -> None:
    arguments = app_options(__doc__.splitlines()[0])
    arguments.add_argument("--requests", type=int, default=100, help="requests in the burst")
    arguments.add_argument("--clients", type=int, default=4, help="concurrent clients")
    arguments.add_argument("--time-limit", type=float, default=300, help="seconds, at most")
    args = arguments.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="memory-") as folder:
        for model in models(args):
            figures = {
                app: peak_memory(model, script, Path(folder) / "app.log", args)
                for app, script in APPS.items()
            }
            for app, row in figures.items():
                rows.append(
                    {
                        "model": model.name,
                        "page": app,
                        **row,
                        "x_keras": row["peak_MB"] / figures["keras"]["peak_MB"],
                        "of_512MB_%": 100 * row["peak_MB"] / HEROKU_MEMORY_MB,
                    }
                )
    title = (
        f"Resident memory of the app's process tree, sampled every 20 ms from launch "
        f"({args.requests} requests from {args.clients} clients)"
    )
    report(args, "memory", {title: rows})


if __name__ == "__main__":
    main()
