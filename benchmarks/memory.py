"""Peak memory: the app's whole process, from launch through a burst of requests.

Heroku's basic dynos have 512 MB and count every process in the dyno: here
the server and its decoder processes, sampled together every 20 ms
(``tests.support.harness.ProcessMemory``): the peak while the model loads,
then the one under load.

Two bursts: ``ordinary`` (the cat photo, our page against the Keras page on
the same weights), and ``hostile`` (clients at once, each uploading a
~40-megapixel image of every kind in ``tests/support/images.py``'s ``LARGE``: small
files that decode to hundreds of MB). After the burst the app rests 10 s and
its memory is read again: it should be back near idle.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    APPS,
    HEROKU_MEMORY_MB,
    MB,
    app_options,
    burst,
    models,
    report,
    serving,
)
from tests.support.images import LARGE, write_large_images
from tests.support.photos import CAT_PHOTO

REST_S = 10.0


def peak_memory(
    model: Path, script: str, photos: list[Path], folder: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Peaks (MB) during start-up and during the burst, after it, and what it gave."""
    protocol = "rest" if script == "app.py" else "page"
    with serving(model, folder / "app.log", script, dict(args.env)) as server:
        start_up = server.memory.take_peak() / MB
        idle = server.memory.current / MB
        result = burst(server.url, photos, args.requests, args.clients, args.time_limit, protocol)
        under_burst = server.memory.take_peak() / MB
        time.sleep(REST_S)
        after = server.memory.current / MB
    summary = result.summary()
    for error in sorted(set(result.errors))[:3]:
        print(f"  error: {error}")
    return {
        "start_up_peak_MB": start_up,
        "idle_MB": idle,
        "burst_peak_MB": under_burst,
        f"after_{REST_S:.0f}s_MB": after,
        "peak_MB": max(start_up, under_burst),
        "requests": summary["requests"],
        "classified": summary["requests"] - summary["errors"],
        "p50_ms": summary["p50_ms"],
        "max_ms": summary["max_ms"],
    }


def main() -> None:
    arguments = app_options(__doc__.splitlines()[0])
    arguments.add_argument("--burst", choices=["ordinary", "hostile"], default="ordinary")
    arguments.add_argument(
        "--requests",
        type=int,
        help="requests in the burst (100 ordinary; every kind once per client, hostile)",
    )
    arguments.add_argument("--clients", type=int, help="concurrent clients (4 ordinary, 8 hostile)")
    arguments.add_argument("--time-limit", type=float, default=300, help="seconds, at most")
    args = arguments.parse_args()
    hostile = args.burst == "hostile"
    args.clients = args.clients or (8 if hostile else 4)
    args.requests = args.requests or (args.clients * len(LARGE) if hostile else 100)
    pages = {"ours": APPS["ours"]} if hostile else APPS
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="memory-") as name:
        folder = Path(name)
        photos = write_large_images(folder / "large") if hostile else [CAT_PHOTO]
        for model in models(args):
            figures = {
                app: peak_memory(model, script, photos, folder, args)
                for app, script in pages.items()
            }
            for app, row in figures.items():
                rows.append(
                    {
                        "model": model.name,
                        "page": app,
                        **row,
                        "of_512MB_%": 100 * row["peak_MB"] / HEROKU_MEMORY_MB,
                    }
                )
    kinds = f"~40 MP images of {len(LARGE)} kinds" if hostile else "the cat photo"
    title = (
        f"Memory of the app's process tree, peaks sampled every 20 ms ({args.requests} "
        f"requests of {kinds} from {args.clients} clients)"
    )
    report(args, "memory", {title: rows})


if __name__ == "__main__":
    main()
