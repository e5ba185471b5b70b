"""Fuzz the running app with thousands of mutated files; count the answers by status.

Starts the app as Heroku does, sends ``--cases`` seeded mutations of real
files (every format the app reads; see ``tests/support/fuzzing.py``) to
``POST /classify`` from ``--clients`` clients at once, and ``--page-cases``
to the page's ``/predict``; then checks that the app still lives, still
classifies, and stayed within a dyno's memory. Exits 1 if any answer was a
500, not JSON, or a dropped connection.

    .venv/bin/python -m benchmarks.fuzz --model models/inception_v3.onnx --cases 2000
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from gradio_client import Client
from PIL import Image

from benchmarks.common import HEROKU_MEMORY_MB, MB, models, options, report, serving
from tests.support.fuzzing import Case, Tally, cases, seed_files, send_page, send_rest
from tests.support.photos import CAT_PHOTO


def main() -> int:
    parser = options(__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases for POST /classify")
    parser.add_argument("--page-cases", type=int, default=200, help="cases for the page")
    parser.add_argument("--clients", type=int, default=4, help="REST clients at once")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    seeds = seed_files(Image.open(CAT_PHOTO))
    tally = Tally()
    with (
        tempfile.TemporaryDirectory() as folder,
        serving(models(args)[0], Path(folder) / "app.log") as app,
    ):
        start = time.perf_counter()
        with httpx.Client(base_url=app.url, timeout=60) as http:

            def send(case: Case) -> None:
                send_rest(http, case, tally)

            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(send, cases(seeds, args.cases, args.seed)))
            page = Client(app.url, verbose=False)
            for case in cases(seeds, args.page_cases, args.seed + 1):
                send_page(page, Path(folder), case, tally)
            alive = http.get("healthz").status_code == 200
            classifies = (
                http.post("classify", files={"file": CAT_PHOTO.read_bytes()}).status_code == 200
            )
        seconds = time.perf_counter() - start
        peak = app.memory.take_peak()
        peak_processes = app.memory.peak_processes
        log = app.log.read_text()
    print(
        f"{args.cases} REST and {args.page_cases} page cases in {seconds:.0f} s (seed {args.seed})"
    )
    answers = [{"answer": kind, "count": count} for kind, count in sorted(tally.counts.items())]
    report(args, "fuzz", {"Answers, by kind": answers})
    print(f"alive after: {alive}; classifies after: {classifies}")
    print(f"peak memory: {peak / MB:.0f} MB (a dyno has {HEROKU_MEMORY_MB})")
    for process, held in peak_processes.items():
        print(f"  {held / MB:5.0f} MB  {process}")
    print(f"tracebacks in the log: {log.count('Traceback')}")
    for failure in tally.failures:
        print(f"FAILED {failure}")
    ok = not tally.failures and alive and classifies and peak / MB < HEROKU_MEMORY_MB
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
