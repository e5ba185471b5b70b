"""The loop closed for real: corrections sent over REST and on the page, exported, the
docs' fine-tuning example trained on the export, converted and served; the app then
answers those photos with their corrections' labels.

The model is the README's own small CNN (its first example), trained on noisy photos
of one colour per flower; the corrected photos are of two colours it never saw, so
its answers on them are wrong and nothing it learned says otherwise.
"""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from classifier.assets import ROOT
from tests.support.converter import convert
from tests.support.harness import classify, serving
from tests.test_browser import DESKTOP, Browser, browser, page_on
from tests.test_feedback_page import classify as classify_on_page
from tests.test_feedback_page import send_wrong
from tests.test_user_model import FLOWER_COLOURS, FLOWERS, code_blocks, readme_section

__all__ = ["browser"]  # the module's Chromium, a fixture

PHOTOS_PER_FLOWER = 30
"""Enough for the README's CNN to tell its five colours apart in its ten epochs."""
CORRECTED = {"roses": (40, 80, 220), "tulips": (40, 180, 60)}
"""What people said photos of two new colours are: blue ones roses, green ones tulips."""
PHOTOS_PER_CORRECTION = 3


def write_photos(folder: Path, colours: dict[str, tuple[int, int, int]], count: int) -> list[Path]:
    """``folder/<name>/<n>.png``: ``count`` small noisy photos of each name's colour."""
    rng = np.random.default_rng(3)
    written = []
    for name, colour in colours.items():
        (folder / name).mkdir(parents=True)
        for index in range(count):
            noise = rng.integers(-30, 30, (40, 48, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{index}.png")
            written.append(folder / name / f"{index}.png")
    return written


def doc_section(path: Path, title: str) -> str:
    text = path.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def run_example(code: str, name: str) -> None:
    """A documented example, as its reader runs it, seeded so that it trains the same each time."""
    import keras

    keras.utils.set_random_seed(0)
    exec(compile(code, name, "exec"), {})


def convert_as_documented(output: Path) -> Path:
    """The README's command for one's own model, on ``flowers.keras`` here."""
    (command,) = [
        line
        for line in code_blocks(readme_section("Serve your own model"), "bash")[0].splitlines()
        if line.startswith("python convert_model.py")
    ]
    convert(*shlex.split(command)[2:], "--output", str(output))
    return output


def answers(url: str, photos: list[Path]) -> list[str]:
    with httpx.Client(base_url=url, timeout=60) as http:
        return [classify(http, photo, k=1).json()["predictions"][0]["label"] for photo in photos]


@pytest.mark.slow
def test_corrections_exported_and_trained_on_are_the_new_models_answers(
    browser: Browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_photos(tmp_path / "flowers", dict(zip(FLOWERS, FLOWER_COLOURS, strict=True)), 30)
    run_example(code_blocks(readme_section("Serve your own model"), "python")[0], "README.md")
    served = convert_as_documented(tmp_path / "served" / "flowers.onnx")

    photos = write_photos(tmp_path / "corrected", CORRECTED, PHOTOS_PER_CORRECTION)
    labels = [photo.parent.name for photo in photos]
    data = {"DATA_DIR": str(tmp_path / "data")}
    with serving(served, tmp_path / "served.log", **data) as instance:
        before = answers(instance.url, photos)
        assert all(a != b for a, b in zip(before, labels, strict=True)), before
        by_rest, on_page = photos[0::2], photos[1::2]
        for photo in by_rest:
            with photo.open("rb") as image:
                sent = httpx.post(
                    f"{instance.url}feedback",
                    files={"file": (photo.name, image)},
                    data={"label": photo.parent.name},
                    timeout=60,
                )
            assert sent.status_code == 201, sent.text
        with page_on(browser, instance.url, DESKTOP) as page:
            for photo in on_page:
                classify_on_page(page, photo)
                send_wrong(page, photo.parent.name[:3], photo.parent.name)

    exported = subprocess.run(
        [sys.executable, "-m", "service.feedback", "export", str(tmp_path / "feedback")],
        cwd=ROOT,
        env={**os.environ, **data},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    with (tmp_path / "feedback" / "feedback.csv").open(newline="") as table:
        assert sorted(row["label"] for row in csv.DictReader(table)) == sorted(labels)

    docs = ROOT / "docs" / "feedback.md"
    (fine_tune,) = code_blocks(doc_section(docs, "Fine-tune, convert, deploy"), "python")
    run_example(fine_tune, str(docs))
    tuned = convert_as_documented(tmp_path / "tuned" / "flowers.onnx")
    with serving(tuned, tmp_path / "tuned.log") as instance:
        assert answers(instance.url, photos) == labels
