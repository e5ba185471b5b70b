"""Answers with ``explain=true`` are bounded: a cap on ``k``, an overlay JPEG of bounded
size (noise, which JPEG cannot compress, included), and a batch's answer within the
size its OpenAPI description states."""

from __future__ import annotations

import base64
import io
import re

import httpx
import numpy as np
import pytest
from PIL import Image

from service.api import (
    BATCH_FILES,
    FILE_NAME_CHARS,
    MAX_EXPLAINED_K,
    MAX_OVERLAY_BYTES,
    OVERLAY_PREFIX,
    bounded_jpeg,
)
from tests.support.harness import classify
from tests.support.photos import CAT_PHOTO


@pytest.fixture(scope="module")
def http(app_url: str) -> httpx.Client:
    with httpx.Client(base_url=app_url, timeout=300) as client:
        yield client


def noise(seed: int, side: int = 1024) -> Image.Image:
    """The costliest overlay there is: pixels JPEG cannot compress, at the overlay's size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decoded_overlay(url: str) -> tuple[Image.Image, int]:
    """An overlay data URL -> the image and its size in bytes."""
    assert url.startswith(OVERLAY_PREFIX)
    encoded = base64.b64decode(url.removeprefix(OVERLAY_PREFIX), validate=True)
    return Image.open(io.BytesIO(encoded)), len(encoded)


def test_an_overlay_of_noise_is_held_to_its_size() -> None:
    encoded = bounded_jpeg(noise(0))
    assert len(encoded) <= MAX_OVERLAY_BYTES
    assert Image.open(io.BytesIO(encoded)).format == "JPEG"


def test_an_overlay_of_a_photo_keeps_its_size_and_quality() -> None:
    photo = Image.open(CAT_PHOTO).convert("RGB")
    assert bounded_jpeg(photo) == jpeg_bytes(photo, 85)


def test_the_rest_overlay_is_a_jpeg_data_url(http: httpx.Client) -> None:
    body = classify(http, CAT_PHOTO, explain="true").json()
    image, size = decoded_overlay(body["overlay"])
    assert image.format == "JPEG"
    assert image.size == Image.open(CAT_PHOTO).size
    assert size <= MAX_OVERLAY_BYTES


@pytest.mark.parametrize("route", ["classify", "classify/batch"])
def test_k_with_explain_is_capped(http: httpx.Client, route: str) -> None:
    def sent(k: int) -> httpx.Response:
        with CAT_PHOTO.open("rb") as image:
            field = "file" if route == "classify" else "files"
            files = {field: (CAT_PHOTO.name, image)}
            return http.post(route, files=files, params={"k": k, "explain": "true"})

    refused = sent(MAX_EXPLAINED_K + 1)
    assert refused.status_code == 422, refused.text
    assert f"at most {MAX_EXPLAINED_K}" in refused.json()["error"]
    assert sent(MAX_EXPLAINED_K).status_code == 200
    without = classify(http, CAT_PHOTO, k=MAX_EXPLAINED_K * 2)
    assert len(without.json()["predictions"]) == MAX_EXPLAINED_K * 2  # only heatmaps are capped


def stated_bound(http: httpx.Client) -> int:
    description = http.get("openapi.json").json()["paths"]["/classify/batch"]["post"]["description"]
    (bound,) = re.findall(r"answer is at most ([\d,]+) bytes", description)
    return int(bound.replace(",", ""))


def test_a_batch_explained_at_the_largest_k_stays_within_the_stated_bound(
    http: httpx.Client,
) -> None:
    """The worst case: every file noise (each overlay at its cap), every name over the
    length echoed, the largest ``k``."""
    files = [
        ("files", (f"{number:02d}" + "\u2028x" * FILE_NAME_CHARS, jpeg_bytes(noise(number), 85)))
        for number in range(BATCH_FILES)
    ]
    response = http.post(
        "classify/batch", files=files, params={"k": MAX_EXPLAINED_K, "explain": "true"}
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == BATCH_FILES
    for result in results:
        assert len(result["predictions"]) == MAX_EXPLAINED_K
        assert len(result["file"]) == FILE_NAME_CHARS
        assert decoded_overlay(result["overlay"])[1] <= MAX_OVERLAY_BYTES
    assert len(response.content) <= stated_bound(http)
