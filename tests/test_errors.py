"""One error model: each error class says its HTTP status, metrics outcome and exit code."""

from __future__ import annotations

import pytest

from classifier.admission import BusyError
from classifier.errors import ClassifierError
from classifier.labels import LabelsError
from classifier.model import ModelError
from classifier.preprocess import ImageError, ImageTooLargeError, UnsupportedImageError
from service.api import MalformedUploadError, MissingUploadError, UploadTooLargeError
from service.internals import InternalsError
from service.settings import SettingsError


@pytest.mark.parametrize(
    ("error", "status", "outcome", "exit_code"),
    [
        (ImageError("x"), 400, "bad_image", 1),
        (MissingUploadError("x"), 400, "bad_image", 1),
        (MalformedUploadError("x"), 400, "bad_image", 1),
        (ImageTooLargeError("x"), 413, "too_large", 1),
        (UploadTooLargeError("x"), 413, "too_large", 1),
        (UnsupportedImageError("x"), 415, "unsupported", 1),
        (BusyError("x", retry_after=5), 503, "busy", 1),
        (SettingsError("x"), 500, "error", 2),
        (ModelError("x"), 500, "error", 6),
        (LabelsError("x"), 500, "error", 8),
        (InternalsError("x"), 500, "error", 9),
    ],
)
def test_each_error_carries_its_status_outcome_and_exit_code(
    error: ClassifierError, status: int, outcome: str, exit_code: int
) -> None:
    assert isinstance(error, ClassifierError)
    assert (error.status, error.outcome, error.exit_code) == (status, outcome, exit_code)
    assert error.server_fault == (status == 500)


def test_busy_says_when_to_retry() -> None:
    assert BusyError("x", retry_after=5).headers == {"Retry-After": "5"}
    assert ImageError("x").headers == {}
