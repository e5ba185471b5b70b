"""The OCI image: its size above the base, and the hostile burst under a hard memory limit.

For each ``--model`` the repository is exported as git tracks it, with that
model in ``models/``, and built with podman from the stand-in base (see
``tests/support/container.py``). Then the image runs with ``--memory LIMIT
--memory-swap LIMIT`` (the kernel enforces it, no swap) and takes the
hostile burst of ``benchmarks/memory.py --burst hostile``: 8 clients, each
uploading a ~40-megapixel image of every kind. Memory is the container's
cgroup, page cache included: what the limit is held against. A limit holds
when every upload is classified, nothing is OOM-killed and the app answers
after. ``--find-limit`` also looks for the smallest limit that holds, in
16 MB steps.
"""

from __future__ import annotations

import argparse
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import HEROKU_MEMORY_MB, MB, burst, models, options, report
from tests.support.container import (
    build,
    ensure_base,
    export,
    remove,
    size_above_base,
    start,
    unavailable,
    wait_until_ready,
)
from tests.support.images import LARGE, write_large_images

CLIENTS = 8
PORT = 18760
STEP_MB = 16
LOWEST_MB = 128
"""Below what the app holds at rest with either model: assumed, not run, to fail."""


def build_image(model: Path, folder: Path) -> str:
    """The image of the repository with ``model`` in ``models/``, tagged by the model's name."""
    context = export(folder / model.stem, [model])
    tag = f"localhost/slim-inception:bench-{model.stem.replace('.', '-')}"
    return build(context, tag)


def under_limit(tag: str, model: Path, limit_mb: int, photos: list[Path]) -> dict[str, Any]:
    """The hostile burst on a container limited to ``limit_mb``: what it gave, and whether
    it held."""
    box = start("slim-inception-bench", tag, PORT, limit_mb, MODEL_PATH=f"models/{model.name}")
    try:
        wait_until_ready(box, timeout=120)
        idle = box.peak_memory() / MB
        box.reset_peak()
        result = burst(box.url, photos, CLIENTS * len(LARGE), CLIENTS, 300)
        killed = box.oom_killed()
        peak = None if killed else box.peak_memory() / MB
        answers = not killed and _answers(box.url)
        summary = result.summary()
        return {
            "limit_MB": limit_mb,
            "ready_s": box.ready_after,
            "start_up_peak_MB": idle,
            "burst_peak_MB": peak,
            "classified": summary["requests"] - summary["errors"],
            "requests": summary["requests"],
            "oom_killed": killed,
            "held": answers and summary["errors"] == 0,
        }
    finally:
        remove(box)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}readyz", timeout=10) as response:
            return response.status == 200
    except OSError:
        return False


def smallest_limit(tag: str, model: Path, photos: list[Path], highest: int) -> list[dict]:
    """Bisect, in ``STEP_MB`` steps, for the smallest limit that holds; every probe's row."""
    rows = []
    low, high = LOWEST_MB // STEP_MB, highest // STEP_MB  # low fails (assumed), high holds
    while high - low > 1:
        middle = (low + high) // 2
        row = under_limit(tag, model, middle * STEP_MB, photos)
        print(f"  {model.name} at {middle * STEP_MB} MB: {'held' if row['held'] else 'failed'}")
        rows.append(row)
        low, high = (low, middle) if row["held"] else (middle, high)
    return rows


def main() -> None:
    arguments = options(__doc__.splitlines()[0])
    arguments.add_argument(
        "--limit", type=int, default=HEROKU_MEMORY_MB, help="the memory limit, MB"
    )
    arguments.add_argument(
        "--find-limit", action="store_true", help="also bisect for the smallest limit that holds"
    )
    args: argparse.Namespace = arguments.parse_args()
    reason = unavailable()
    if reason:
        raise SystemExit(f"error: cannot build images here: {reason}")
    sizes, limits = [], []
    with tempfile.TemporaryDirectory(prefix="container-") as name:
        folder = Path(name)
        ensure_base(folder)
        photos = write_large_images(folder / "large")
        for model in models(args):
            tag = build_image(model, folder)
            size = size_above_base(tag) / MB
            sizes.append({"model": model.name, "above_base_MB": size})
            rows = [under_limit(tag, model, args.limit, photos)]
            if args.find_limit:
                rows += smallest_limit(tag, model, photos, args.limit)
            limits += [{"model": model.name, **row} for row in rows]
            held = [row["limit_MB"] for row in rows if row["held"]]
            sizes[-1]["smallest_limit_held_MB"] = min(held) if held else None
    report(
        args,
        "container",
        {
            "The image: layers above the base (uncompressed), smallest limit that held": sizes,
            f"Under a hard limit (no swap): {CLIENTS} clients, ~40 MP images of {len(LARGE)} "
            "kinds, peaks of the container's cgroup": limits,
        },
    )


if __name__ == "__main__":
    main()
