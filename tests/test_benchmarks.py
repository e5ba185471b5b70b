"""Every benchmark runs to the end, as documented, with tiny repeats (the slow tier).

Each is run as ``docs/benchmarks.md`` runs it, ``python -m benchmarks.NAME``
from the repository root, on the session's random-weights model; a figure
is not checked, only that the script finishes and prints its tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from classifier.assets import ROOT
from tests.support.photos import IMAGENET_SAMPLE

pytestmark = pytest.mark.slow

SMOKE_RUNS = {
    "latency": ["--repeats", "1"],
    "latency --profile": ["--profile", "--repeats", "2"],
    "startup": ["--repeats", "1"],
    "memory": ["--requests", "4", "--clients", "2", "--time-limit", "120"],
    "memory --burst hostile": ["--burst", "hostile", "--clients", "1", "--time-limit", "240"],
    "load": ["--clients", "2", "--requests", "4", "--repeats", "2", "--time-limit", "60"],
    "explain": ["--repeats", "2", "--requests", "2"],
    "fuzz": ["--cases", "20", "--page-cases", "4", "--clients", "2"],
    "large_images": ["--photos", "2"],
    "scan": ["--photos", "2", "--hostile", "36"],
    "slug": ["--variant", "ours", "--top", "2"],
    "batch": ["--repeats", "1"],
    "oci_image": [],
    "agents": [],
}
"""Each benchmark (``keras_app`` is the page ``startup`` and ``memory`` launch) and its
flags; the first word names the script."""
NEEDS_SAMPLE = {"large_images"}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("run", list(SMOKE_RUNS))
def test_the_benchmark_runs_to_the_end(run: str, model_path: Path, tmp_path: Path) -> None:
    script = run.split()[0]
    if script in NEEDS_SAMPLE and not IMAGENET_SAMPLE.is_dir():
        pytest.skip(f"{IMAGENET_SAMPLE} is absent: the ImageNet sample photos are local-only")
    tables = tmp_path / "tables.json"
    command = [sys.executable, "-m", f"benchmarks.{script}", "--model", str(model_path)]
    result = subprocess.run(
        [*command, *SMOKE_RUNS[run], "--json", str(tables)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert json.loads(tables.read_text())["tables"], "no tables written"
