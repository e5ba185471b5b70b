"""Load: the bare classifier, the REST API and the page's protocol, one run.

The app is launched as the Procfile does, on 127.0.0.1 only. First, one
client and the same photo: a bare ``Classifier.classify`` in this process
(decoding in this process, and in the decoder jail's workers, as the app
does), ``POST /classify`` and the page's three requests (upload, call,
result) take turns, so the machine's drift falls on all alike. Then throughput: C
clients at once for each, the bare classifier as C threads of this process.
"""

from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PROTOCOLS,
    app_options,
    burst,
    interleaved,
    milliseconds,
    models,
    report,
    serving,
)
from classifier.model import Classifier
from tests.support.photos import CAT_PHOTO


def bare_throughput(classifier: Classifier, requests: int, clients: int) -> float:
    """Classifications per second of ``clients`` threads sharing one ``Classifier``."""
    tickets = iter(range(requests))
    lock = threading.Lock()

    def work(_: int) -> None:
        while True:
            with lock:
                if next(tickets, None) is None:
                    return
            classifier.classify(CAT_PHOTO)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, range(clients)))
    return requests / (time.perf_counter() - start)


def main() -> None:
    arguments = app_options(__doc__.splitlines()[0])
    arguments.add_argument("--clients", type=int, default=8, help="concurrent clients")
    arguments.add_argument("--requests", type=int, default=200, help="requests per throughput run")
    arguments.add_argument("--repeats", type=int, default=100, help="one-client requests each")
    arguments.add_argument("--time-limit", type=float, default=120, help="seconds per run")
    args = arguments.parse_args()
    latency_rows: list[dict[str, Any]] = []
    throughput_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="load-") as folder:
        for model in models(args):
            with serving(
                model, Path(folder) / "app.log", env=dict(args.env), watch_memory=False
            ) as server:
                classifier = Classifier(model)
                jailed = Classifier(model, isolate=True)
                clients = {name: kind(server.url) for name, kind in PROTOCOLS.items()}
                calls = {
                    "bare": partial(classifier.classify, CAT_PHOTO),
                    "bare, decoded in the jail": partial(jailed.classify, CAT_PHOTO),
                }
                calls |= {
                    name: partial(client.classify, CAT_PHOTO) for name, client in clients.items()
                }
                times = {k: milliseconds(v) for k, v in interleaved(calls, args.repeats).items()}
                for client in clients.values():
                    client.close()
                bare_ms = times["bare"]["median_ms"]
                for name, figures in times.items():
                    latency_rows.append(
                        {
                            "model": model.name,
                            "path": name,
                            **figures,
                            "over_bare_ms": figures["median_ms"] - bare_ms,
                        }
                    )
                single = bare_throughput(classifier, args.requests // 2, 1)
                rates = {
                    "bare, 1 thread": single,
                    f"bare, {args.clients} threads": bare_throughput(
                        classifier, args.requests, args.clients
                    ),
                }
                for name in PROTOCOLS:
                    result = burst(
                        server.url, [CAT_PHOTO], args.requests, args.clients, args.time_limit, name
                    )
                    rates[f"{name}, {args.clients} clients"] = result.summary()["req_per_s"]
                    for error in sorted(set(result.errors))[:3]:
                        print(f"  error ({name}): {error}")
                for name, rate in rates.items():
                    throughput_rows.append(
                        {
                            "model": model.name,
                            "path": name,
                            "req_per_s": rate,
                            "x_bare_single": rate / single,
                        }
                    )
    report(
        args,
        "load",
        {
            f"One client, the cat photo ({args.repeats} requests each, taking turns)": latency_rows,
            f"Throughput ({args.requests} requests each)": throughput_rows,
        },
    )


if __name__ == "__main__":
    main()
