"""The photos the tests and benchmarks use: two committed examples, the local sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from classifier.assets import ROOT

EXAMPLES = ROOT / "examples"
CAT_PHOTO = EXAMPLES / "chelsea.png"
COFFEE_PHOTO = EXAMPLES / "coffee.png"
IMAGENET_SAMPLE = ROOT.parent / "shared" / "assets" / "imagenet-sample"
"""100 ImageNet photos beside the clone, local only: never committed."""


def imagenet_sample_photos() -> list[Path]:
    """The sample's photos, sorted; skips the calling test where they are absent."""
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip(f"{IMAGENET_SAMPLE} is absent: the ImageNet sample photos are local-only")
    return sorted(IMAGENET_SAMPLE.glob("*.JPEG"))
