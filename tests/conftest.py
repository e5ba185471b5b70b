"""Session fixtures: each expensive model built once, wherever the tests that use it are;
and the ``slow`` tier.

Models converted from random weights are written to pytest's temporary
folders only; they must never land in ``models/``. Helpers live in
``tests.support``; nothing imports from this file.

``slow`` marks what converts a model of its own, emulates a CPU with qemu,
drives a browser, a balancer, a container or a stress run (the fuzzers,
the hostile burst, the 40-megapixel decodes), or starts an app of its own
to saturate or drain it: the tests using a fixture in
``SLOW_FIXTURES`` here, and those that do it in their own body (marked
where they are). ``make test-fast`` runs the rest, ``-m "not slow"``. The
session's random-weights InceptionV3 (``converted``, about 40 s, once) is
in the fast tier: every test of the app's surface serves it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.support.converter import SEED, Converted, convert
from tests.support.models import ColoursModel, Prototype, build_colours_model, build_prototype
from tests.support.photos import imagenet_sample_photos

SLOW_FIXTURES = frozenset(
    {
        "prototype",  # converts, calibrates and gates InceptionV3, emulated as Haswell, Graviton2
        "colours_model",  # trains and converts the colours CNN
        "family",  # test_families, test_heatmap: keras.applications families, converted
        "written",  # test_user_model: each way a user writes a classifier, converted
        "flat_model",  # test_heatmap: a Flatten head, converted
        "browser",  # test_browser: Chromium
        "round_robin",  # test_scaling: two instances behind HAProxy
        "large_images",  # test_memory: 40-megapixel uploads of every kind, decoded one by one
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """The converter's output for seeded random weights, built once."""
    from conversion.keras_model import WeightsSource, build_model

    model_path = tmp_path_factory.mktemp("random-model") / "inception_v3.onnx"
    stdout = convert("--weights", "random", "--seed", str(SEED), "--output", str(model_path))
    keras_model = build_model(WeightsSource("random", seed=SEED))
    return Converted(model_path, keras_model, stdout)


@pytest.fixture(scope="session")
def model_path(converted: Converted) -> Path:
    return converted.model_path


@pytest.fixture(scope="session")
def app_url(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on a free port, started by the Procfile's command, for the session."""
    from tests.support.harness import serving

    log = tmp_path_factory.mktemp("app") / "app.log"
    with serving(model_path, log) as instance:
        yield instance.url


@pytest.fixture(scope="session")
def colours_model(tmp_path_factory: pytest.TempPathFactory) -> ColoursModel:
    """The user's colours CNN, trained and converted once (tests copy it to change it)."""
    return build_colours_model(tmp_path_factory.mktemp("colours-model"))


@pytest.fixture(scope="session")
def prototype(tmp_path_factory: pytest.TempPathFactory) -> Prototype:
    """The prototype model quantized with the 50/50 split of the sample; skips without it."""
    photos = imagenet_sample_photos()
    return build_prototype(tmp_path_factory.mktemp("prototypes"), photos)
