"""Load: throughput and latency of the running app as concurrent clients grow.

The app is launched as the Procfile does, on 127.0.0.1 only; at each level,
N requests (the cat photo: upload, call, result, over plain HTTP as in the
README's curl recipe) come from C clients at once. Each level stops after N requests or its
time limit, whichever comes first, so the run always ends.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from common import (
    CAT_PHOTO,
    PlainClient,
    app_options,
    burst,
    models,
    report,
    serving,
)


def levels(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    arguments = app_options(__doc__.splitlines()[0])
    arguments.add_argument(
        "--clients", type=levels, default="1,2,4,8", help="concurrency levels, comma-separated"
    )
    arguments.add_argument("--requests", type=int, default=100, help="requests per level")
    arguments.add_argument("--time-limit", type=float, default=120, help="seconds per level")
    args = arguments.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="load-") as folder:
        for model in models(args):
            with serving(model, Path(folder) / "app.log", env=dict(args.env)) as server:
                client = PlainClient(server.url)  # one request first: no level pays for warm-up
                client.classify(CAT_PHOTO)
                client.close()
                for clients in args.clients:
                    server.memory.take_peak()
                    result = burst(server.url, CAT_PHOTO, args.requests, clients, args.time_limit)
                    rows.append(
                        {
                            "model": model.name,
                            "clients": clients,
                            **result.summary(),
                            "peak_MB": server.memory.take_peak(),
                        }
                    )
                    for error in sorted(set(result.errors))[:3]:
                        print(f"  error ({clients} clients): {error}")
    title = f"Load on 127.0.0.1 ({args.requests} requests per level, at most {args.time_limit} s)"
    report(args, "load", {title: rows})


if __name__ == "__main__":
    main()
