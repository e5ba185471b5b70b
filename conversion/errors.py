"""Every refusal the converter makes: one line on stderr and the exit code its class carries.

The runtime's own errors count too where the converter meets them:
``classifier.model.ModelError`` (6, a float32 model to quantize that is missing or
damaged) and ``classifier.labels.LabelsError`` (8, labels that do not fit).
"""

from __future__ import annotations

from classifier.errors import ClassifierError
from classifier.labels import LabelsError
from classifier.model import ModelError


class VerificationError(ClassifierError):
    """A model does not answer as its reference does; nothing was written."""

    exit_code = 1


class EmulationError(ClassifierError):
    """The emulated run could not be made; the message says why."""

    exit_code = 1


class PreprocessingError(ClassifierError):
    """The model does not scale its pixels itself and --preprocessing is missing."""

    exit_code = 2


class WeightsError(ClassifierError):
    """The weights are unavailable or do not fit the model."""

    exit_code = 3


class OutputError(ClassifierError):
    """The output folder cannot be written; the message names it."""

    exit_code = 4


class CalibrationError(ClassifierError):
    """The calibration or verification photos cannot be used; the message says why."""

    exit_code = 5


class UnservableModelError(ClassifierError):
    """The model is not a Keras image classifier the app can serve."""

    exit_code = 7


REFUSALS: tuple[type[ClassifierError], ...] = (
    VerificationError,
    PreprocessingError,
    WeightsError,
    OutputError,
    CalibrationError,
    ModelError,
    UnservableModelError,
    LabelsError,
)
"""The converter's errors, for --help; each carries its own exit code."""

MEANINGS = {
    0: "written and verified",
    2: "bad arguments",
    6: "the float32 model to quantize is missing or damaged",
    8: "the labels do not fit the model",
}
"""Where a code's meaning for the converter is not its class's first words."""


def exit_codes() -> str:
    """``--help``'s list of exit codes, from the error classes themselves."""
    meanings = dict(MEANINGS)
    for error in REFUSALS:
        meaning = (error.__doc__ or "").split(";")[0].rstrip(".")
        meanings.setdefault(error.exit_code, meaning[:1].lower() + meaning[1:])
    return "; ".join(f"{code} {meaning}" for code, meaning in sorted(meanings.items()))
