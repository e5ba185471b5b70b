"""Mutated files, as an attacker sends them: every answer a 200 or a JSON 4xx, never a bug.

A few hundred seeded cases here; ``benchmarks/fuzz.py`` runs thousands.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from PIL import Image

from tests.support.fuzzing import Tally, cases, seed_files, send_page, send_rest
from tests.support.harness import classify, serving
from tests.support.photos import CAT_PHOTO

REST_CASES = 240
PAGE_CASES = 40
MEMORY_BUDGET = 512 * 1024 * 1024
"""A Heroku dyno's memory."""


@pytest.mark.timeout(300)
@pytest.mark.slow  # a stress run: 280 fuzzed uploads, the fast tier's largest after the burst
def test_mutated_files_never_break_the_app(model_path: Path, tmp_path: Path) -> None:
    seeds = seed_files(Image.open(CAT_PHOTO))
    tally = Tally()
    with serving(model_path, tmp_path / "app.log") as instance:
        with httpx.Client(base_url=instance.url, timeout=60) as http:
            for case in cases(seeds, REST_CASES, seed=1):
                send_rest(http, case, tally)
            page = Client(instance.url, verbose=False)
            for case in cases(seeds, PAGE_CASES, seed=2):
                send_page(page, tmp_path, case, tally)
            assert http.get("healthz").status_code == 200
            assert classify(http, CAT_PHOTO).status_code == 200
        peak = instance.memory.take_peak()
        assert instance.process.poll() is None
        # What the fuzzing logged, before shutdown (which may cancel the page
        # client's lingering event stream).
        log = instance.log.read_text()
    assert tally.failures == [], tally.counts
    assert peak < MEMORY_BUDGET
    # The fuzzer reaches both sides: files that still decode, and files that do not.
    assert tally.counts["REST 200"] > 0
    assert sum(n for kind, n in tally.counts.items() if kind.startswith("REST 4")) > 0
    assert "Traceback" not in log
    # The decoders' words are in the log, on the line of the request that sent the file.
    assert re.search(r"INFO classifier\.preprocess \[[0-9a-f]{32}\]: Decoder failed: ", log)
