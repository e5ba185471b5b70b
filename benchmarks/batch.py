"""Batch against singles: 16 ordinary photos as one ``POST /classify/batch``, as 16
``POST /classify`` one after another, and as 16 sent at once by 16 clients.

The app is launched as the Procfile does, on 127.0.0.1 only. The three take
turns (after a warm-up each), so the machine's drift falls on all alike;
the app's peak memory (``VmHWM``, reset before each kind) is read across
all of that kind's repeats. Photos: the first 16 of ../shared's ImageNet
sample (real photos, 8 to 500 kB), or the two example photos in turn.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (
    MB,
    RestClient,
    app_options,
    milliseconds,
    models,
    report,
    serving,
)
from classifier.assets import EXAMPLE_PHOTOS
from service.api import BATCH_FILES
from tests.support.photos import IMAGENET_SAMPLE as SAMPLE


def photos() -> list[Path]:
    sample = sorted(SAMPLE.glob("*.JPEG"))[:BATCH_FILES]
    if len(sample) == BATCH_FILES:
        return sample
    return [EXAMPLE_PHOTOS[i % len(EXAMPLE_PHOTOS)] for i in range(BATCH_FILES)]


def contenders(url: str, http: httpx.Client, chosen: list[Path]) -> dict[str, Any]:
    """The three ways to send ``chosen``, each a call; their connections are opened once."""
    form = [("files", (photo.name, photo.read_bytes())) for photo in chosen]
    one = RestClient(url)
    clients = [RestClient(url) for _ in chosen]

    def batch() -> None:
        response = http.post("classify/batch", files=form)
        response.raise_for_status()
        assert all("predictions" in r for r in response.json()["results"])

    def singles() -> None:
        for photo in chosen:
            one.classify(photo)

    def at_once() -> None:
        with ThreadPoolExecutor(len(chosen)) as pool:
            pairs = zip(clients, chosen, strict=True)
            list(pool.map(lambda pair: pair[0].classify(pair[1]), pairs))

    return {
        f"one batch of {len(chosen)}": batch,
        f"{len(chosen)} singles, one after another": singles,
        f"{len(chosen)} singles at once, {len(chosen)} clients": at_once,
    }


def main() -> None:
    arguments = app_options(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=10, help="runs of each kind")
    args = arguments.parse_args()
    chosen = photos()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="batch-") as folder:
        for model in models(args):
            with (
                serving(model, Path(folder) / "app.log", env=dict(args.env)) as server,
                httpx.Client(base_url=server.url, timeout=120) as http,
            ):
                kinds = contenders(server.url, http, chosen)
                times: dict[str, list[float]] = {name: [] for name in kinds}
                peaks: dict[str, float] = dict.fromkeys(kinds, 0.0)
                for call in kinds.values():
                    call()  # warm-up
                for _ in range(args.repeats):
                    for name, call in kinds.items():
                        server.memory.take_peak()
                        start = time.perf_counter()
                        call()
                        times[name].append(time.perf_counter() - start)
                        peaks[name] = max(peaks[name], server.memory.take_peak() / MB)
                idle = server.memory.current / MB
            for name, figures in ((n, milliseconds(t)) for n, t in times.items()):
                rows.append(
                    {
                        "model": model.name,
                        "how": name,
                        **figures,
                        "per_photo_ms": figures["median_ms"] / len(chosen),
                        "peak_MB": peaks[name],
                        "idle_MB": idle,
                    }
                )
    report(
        args,
        "batch",
        {f"{len(chosen)} photos ({args.repeats} runs each, taking turns)": rows},
    )


if __name__ == "__main__":
    main()
