"""Preprocessing: every kind of image to the model's input, as Keras does it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.metadata import Preprocessing
from classifier.preprocess import ImageError, ImageTooLargeError, decode, preprocess
from tests.support.images import INVALID, VALID, cat
from tests.support.photos import CAT_PHOTO, imagenet_sample_photos

SPEC = Preprocessing()


def keras_pipeline(path: Path) -> np.ndarray:
    """What the converter verified against: Keras' own loading and scaling."""
    import keras
    from keras.applications.inception_v3 import preprocess_input

    image = keras.utils.load_img(path, target_size=(299, 299), interpolation="bilinear")
    return preprocess_input(keras.utils.img_to_array(image))


def test_matches_keras_on_real_photos() -> None:
    photos = [CAT_PHOTO, *imagenet_sample_photos()]
    assert len(photos) == 101
    for photo in photos:
        ours = preprocess(photo, SPEC)
        np.testing.assert_allclose(ours, keras_pipeline(photo), atol=1e-6, err_msg=str(photo))


LARGE_FORMATS = {
    "jpeg": ("big.jpg", {"quality": 92}),
    "progressive jpeg": ("big.jpg", {"quality": 92, "progressive": True}),
    "png": ("big.png", {}),
    "webp": ("big.webp", {"quality": 90}),
    "tiff": ("big.tiff", {}),
    "gif": ("big.gif", {}),
}


@pytest.mark.parametrize("kind", LARGE_FORMATS)
def test_large_images_shrunk_on_load_stay_close_to_keras(kind: str, tmp_path: Path) -> None:
    """Over 4 megapixels, libvips (or Pillow strip by strip, for GIF) shrinks the image
    to twice the input size before the final resize; the input barely moves."""
    file_name, options = LARGE_FORMATS[kind]
    big = cat().resize((4000, 2660), Image.Resampling.LANCZOS)
    path = tmp_path / file_name
    (big.quantize(256) if kind == "gif" else big).save(path, **options)
    difference = np.abs(preprocess(path, SPEC) - keras_pipeline(path))
    assert difference.mean() < 0.01  # about 1 level of 255; measured 0.0013 to 0.0025
    assert difference.max() < 0.1


def test_large_image_exif_orientation_is_honoured(tmp_path: Path) -> None:
    stored = Image.new("RGB", (4000, 2000), (255, 255, 255))
    stored.paste((0, 0, 0), (0, 0, 2000, 2000))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise: the black half on top
    stored.save(tmp_path / "rotated.jpg", exif=exif)
    upright = np.asarray(decode(tmp_path / "rotated.jpg", Preprocessing(height=200, width=100)))
    assert upright[:90].mean() < 10
    assert upright[110:].mean() > 245


def test_output_is_float32_hwc_in_range() -> None:
    array = preprocess(CAT_PHOTO, SPEC)
    assert array.shape == (299, 299, 3)
    assert array.dtype == np.float32
    assert -1.0 <= array.min() < array.max() <= 1.0


@pytest.mark.parametrize("name", VALID)
def test_odd_modes_become_rgb_inputs(name: str, tmp_path: Path) -> None:
    file_name, write = VALID[name]
    path = tmp_path / file_name
    write(path)
    array = preprocess(path, SPEC)
    assert array.shape == (299, 299, 3)
    assert np.isfinite(array).all()
    assert -1.0 <= array.min() <= array.max() <= 1.0


@pytest.mark.parametrize("name", INVALID)
def test_bad_files_raise_image_errors_with_a_message(name: str, tmp_path: Path) -> None:
    file_name, write, phrase = INVALID[name]
    path = tmp_path / file_name
    write(path)
    with pytest.raises(ImageError, match=phrase):
        preprocess(path, SPEC)


def test_sixteen_bit_samples_are_scaled_not_clipped() -> None:
    ramp = np.array([[0, 32896, 65535]], dtype=np.uint16)  # 0, ~half, full
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I;16")
    rgb = np.asarray(decode(image, Preprocessing(height=1, width=3)))
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 128, 255])


def test_float_images_in_unit_range_are_scaled() -> None:
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    rgb = np.asarray(decode(image, Preprocessing(height=1, width=3)))
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 128, 255])


def test_transparency_becomes_white() -> None:
    clear = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    np.testing.assert_array_equal(preprocess(clear, SPEC), 1.0)
    palette = Image.new("P", (10, 10), 0)
    palette.info["transparency"] = 0
    np.testing.assert_array_equal(preprocess(palette, SPEC), 1.0)


def test_exif_orientation_is_honoured() -> None:
    # A wide image, left half black, right half white, stored with EXIF
    # orientation 6: viewers rotate it 90 degrees clockwise, so the black
    # half ends up on top.
    stored = Image.new("RGB", (200, 100), (255, 255, 255))
    stored.paste((0, 0, 0), (0, 0, 100, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif)
    upright = np.asarray(decode(buffer.getvalue(), Preprocessing(height=200, width=100)))
    assert upright[:90].mean() < 10  # black on top
    assert upright[110:].mean() > 245  # white below


def test_too_many_pixels_is_refused_before_decoding() -> None:
    big = Image.new("L", (8000, 6000))
    with pytest.raises(ImageTooLargeError, match="8000 x 6000"):
        preprocess(big, SPEC)
