"""HEIC/HEIF (pillow-heif, loaded when the first one arrives) and AVIF (Pillow's own),
as phones and browsers save them: upright, the first image, within the memory promises."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from classifier.admission import MemoryBudget
from classifier.assets import ROOT
from classifier.metadata import Preprocessing
from classifier.options import MB, AdmissionOptions
from classifier.preprocess import (
    ImageTooLargeError,
    decode,
    decode_with_photo,
    open_image,
)
from tests.support.harness import serving
from tests.support.images import save_heic
from tests.support.models import Prototype
from tests.support.photos import CAT_PHOTO, imagenet_sample_photos

AGREEMENT_PHOTOS = 10
AGREEMENT_NEEDED = 9


def heic(image: Image.Image, path: Path, **options: object) -> Path:
    save_heic(image, path, **options)
    return path


def cat() -> Image.Image:
    return Image.open(CAT_PHOTO).convert("RGB")


def test_pillow_heif_is_loaded_only_when_a_heif_file_arrives(tmp_path: Path) -> None:
    photo = heic(cat(), tmp_path / "cat.heic")
    script = (
        "import sys\n"
        "from classifier.metadata import Preprocessing\n"
        "from classifier.preprocess import preprocess\n"
        "preprocess(sys.argv[1], Preprocessing())\n"
        "print('pillow_heif' in sys.modules)\n"
        "preprocess(sys.argv[2], Preprocessing())\n"
        "print('pillow_heif' in sys.modules)\n"
    )
    printed = subprocess.run(
        [sys.executable, "-c", script, str(CAT_PHOTO), str(photo)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert printed == ["False", "True"]


def test_a_heic_decodes_as_its_jpeg_does(tmp_path: Path) -> None:
    """The same pixels within HEVC's loss: the photo, and the model's input."""
    spec = Preprocessing()
    ours = np.asarray(decode(heic(cat(), tmp_path / "cat.heic"), spec), np.float32)
    reference = np.asarray(decode(CAT_PHOTO, spec), np.float32)
    assert np.abs(ours - reference).mean() < 4


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    """Stored on its side with orientation 6 (a phone held upright), decoded upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = cat().transpose(Image.Transpose.ROTATE_90)
    path = heic(sideways, tmp_path / "sideways.heic", exif=exif.tobytes())
    decoded = decode_with_photo(path, Preprocessing(), photo_side=1024)
    assert decoded.photo is not None
    assert decoded.photo.size == cat().size
    difference = np.abs(np.asarray(decoded.photo, np.float32) - np.asarray(cat(), np.float32))
    assert difference.mean() < 4


def test_the_first_image_of_a_sequence_is_classified(tmp_path: Path) -> None:
    import pillow_heif

    black = Image.new("RGB", cat().size)
    sequence = pillow_heif.from_pillow(cat())
    sequence.add_from_pillow(black)
    sequence.primary_index = 1
    path = tmp_path / "sequence.heic"
    sequence.save(path, quality=90)
    decoded = np.asarray(decode(path, Preprocessing()), np.float32)
    assert np.abs(decoded - np.asarray(decode(CAT_PHOTO, Preprocessing()))).mean() < 4


def test_too_many_megapixels_is_refused_from_the_header(tmp_path: Path) -> None:
    path = heic(cat(), tmp_path / "cat.heic")
    with pytest.raises(ImageTooLargeError, match=r"451 x 300 pixels, over the limit of 0.1 mega"):
        open_image(path, max_pixels=100_000)


def test_a_heic_over_the_budget_is_a_413_before_decoding(tmp_path: Path) -> None:
    """A 24 MP HEIC decodes in full (7.3 bytes a pixel): more than the default budget."""
    path = heic(Image.new("RGB", (5712, 4284), (90, 120, 150)), tmp_path / "24mp.heic")
    budget = MemoryBudget(AdmissionOptions().memory_budget_mb * MB, timeout=1)
    with pytest.raises(ImageTooLargeError, match=r"would take about \d+ MB to decode"):
        decode(path, Preprocessing(), admit=budget.reserve)


# --- the photos of the issue, as HEIC and AVIF, over HTTP --------------------------


@pytest.fixture(scope="module")
def decided_app(prototype: Prototype, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on the prototype model, decided about every sample photo: random
    weights would make every top class a tie."""
    log = tmp_path_factory.mktemp("prototype-heic") / "app.log"
    with serving(prototype.float_model, log) as instance:
        yield instance.url


def top_class(http: httpx.Client, name: str, data: bytes, content_type: str) -> int:
    response = http.post("classify", content=data, headers={"Content-Type": content_type})
    assert response.status_code == 200, (name, response.text)
    return response.json()["predictions"][0]["index"]


def test_held_out_photos_as_heic_and_avif_answer_as_their_jpeg(
    decided_app: str, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    photos = imagenet_sample_photos()[5::10][:AGREEMENT_PHOTOS]
    agree = {"heic": 0, "avif": 0}
    with httpx.Client(base_url=decided_app, timeout=120) as http:
        for photo in photos:
            expected = top_class(http, photo.name, photo.read_bytes(), "image/jpeg")
            image = Image.open(photo).convert("RGB")
            avif = io.BytesIO()
            image.save(avif, "AVIF", quality=75)
            heic_bytes = heic(image, tmp_path / "photo.heic").read_bytes()
            agree["heic"] += top_class(http, photo.name, heic_bytes, "image/heic") == expected
            agree["avif"] += top_class(http, photo.name, avif.getvalue(), "image/avif") == expected
    record_property("agreement", agree)  # in --junitxml's report
    assert agree["heic"] >= AGREEMENT_NEEDED, agree
    assert agree["avif"] >= AGREEMENT_NEEDED, agree
