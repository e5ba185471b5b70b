"""The app's models as an ARM64 CPU: Graviton2 (Heroku Fir's dynos) and a Cortex-A76.

``qemu-aarch64`` runs an arm64 Python 3.11 from Debian's packages with the
runtime's aarch64 wheels from ``requirements.txt`` (``make arm64-root``),
and in it the project's own ``Classifier``, float32 and int8. Each run
decodes the photo files itself (libvips and Pillow as built for ARM), so
one emulated run gives both checks:

- on the same input arrays (ARM's), this machine's answers: float32
  probabilities within 1e-4, int8 top-1 equal and within 0.01;
- end to end from the files, each side decoding its own: top-1 equal, the
  decodes' difference reported in ``test-artifacts/arm64-*.json``.

Emulation is slow (float32 ~60 CPU seconds a photo, int8 ~7), so float32
runs two photos as Graviton2 and one as Cortex-A76, int8 six on each, each
test's time limit from its photo count (``tests.support.budgets``). The
model is the session's prototype model (``tests.support.models``), quantized
by the converter, whose gate checks it as Graviton2 too.
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier import cpu
from classifier.assets import ROOT
from classifier.cpu import CpuFeatures
from classifier.model import Classifier
from conversion.emulation import CORTEX_A76, NEOVERSE_N1, EmulatedCpu, run, unavailable
from tests.support.budgets import ARM64_FLOAT32, ARM64_INT8
from tests.support.converter import convert, linked
from tests.support.models import EMULATED_PHOTOS, Prototype
from tests.support.photos import CAT_PHOTO, COFFEE_PHOTO, imagenet_sample_photos

FLOAT32_PHOTOS = {NEOVERSE_N1: 2, CORTEX_A76: 1}
"""Graviton2, Fir's CPU, decodes a large WebP with libvips too."""
INT8_PHOTOS = 6
MAX_FLOAT32_DIFFERENCE = 1e-4
MAX_INT8_DIFFERENCE = 0.01
ARTIFACTS = ROOT / "test-artifacts"

needs_arm64 = pytest.mark.skipif(
    unavailable(NEOVERSE_N1) is not None,
    reason=f"ARM64 cannot be emulated here: {unavailable(NEOVERSE_N1)}",
)


@dataclass(frozen=True)
class Models:
    float32: Path
    int8: Path
    photos: list[Path]
    """PNG, WebP and JPEG, small (Pillow) and large (libvips): each decoder the app uses."""


@pytest.fixture(scope="module")
def models(prototype: Prototype, tmp_path_factory: pytest.TempPathFactory) -> Models:
    sample = imagenet_sample_photos()  # skips where the photos are absent
    folder = tmp_path_factory.mktemp("arm64")
    # Over 4 megapixels, libvips decodes them shrinking (as built for ARM, there).
    large = Image.open(sample[1]).resize((2400, 1800), Image.Resampling.BICUBIC)
    webp, jpeg = folder / "large.webp", folder / "large.jpg"
    large.save(webp, quality=90)
    large.save(jpeg, quality=90)
    photos = [CAT_PHOTO, webp, COFFEE_PHOTO, jpeg, *sample[3:5]]
    return Models(prototype.float_model, prototype.int8_model, photos)


@needs_arm64
def test_the_int8_gate_checked_it_as_graviton2(prototype: Prototype) -> None:
    metadata = prototype.int8_model.with_suffix(".json")
    verification = json.loads(metadata.read_text())["verification"]
    arm = [entry for entry in verification["cpus"] if entry["measured_on"] == NEOVERSE_N1.command]
    assert len(arm) == 1, verification
    assert arm[0]["cpu_class"] == cpu.ARM64
    assert arm[0]["instruction_sets"] == ["asimd", "asimddp"]
    assert arm[0]["samples"] == EMULATED_PHOTOS
    assert arm[0]["passed"] is True
    assert arm[0]["cpu_difference"] <= MAX_INT8_DIFFERENCE


@pytest.mark.slow
def test_without_the_root_the_converter_says_so(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The int8 gate notes, on screen and in the metadata, that ARM64 was not checked
    and how to make it so (Haswell is left out here to save its emulation)."""
    photos = imagenet_sample_photos()[:4]  # skips where the photos are absent
    for name in (model_path.name, "inception_v3.json", "imagenet_class_index.json"):
        shutil.copy(model_path.parent / name, tmp_path / name)
    monkeypatch.setenv("ARM64_ROOT", str(tmp_path / "no-root"))
    monkeypatch.setattr(
        "conversion.emulation.qemu_available", lambda cpu=None: cpu.machine == "aarch64"
    )
    stdout = convert(
        "--output", str(tmp_path / model_path.name), "--quantize", "int8",
        "--calibration", str(linked(tmp_path / "photos", photos)),
        "--min-top1-agreement", "0",  # random weights: near-uniform answers
    )  # fmt: skip
    expected = (
        f"not checked as an ARM64 CPU (Graviton2): the ARM64 emulation root "
        f"{tmp_path / 'no-root'} is missing; prepare it with `make arm64-root`"
    )
    assert expected in stdout
    metadata = json.loads((tmp_path / "inception_v3.int8.json").read_text())
    assert expected in metadata["verification"]["note"]


def top1(probabilities: np.ndarray) -> list[int]:
    return np.argmax(probabilities, axis=1).tolist()


def photo_count(arm: EmulatedCpu, precision: str) -> int:
    return FLOAT32_PHOTOS[arm] if precision == "float32" else INT8_PHOTOS


def emulated_cases() -> list:
    """Each CPU and precision, its time limit from the photos it emulates."""
    budgets = {"float32": ARM64_FLOAT32, "int8": ARM64_INT8}
    return [
        pytest.param(
            arm,
            precision,
            id=f"{arm.qemu_cpu}-{precision}",
            marks=budgets[precision].timeout(photo_count(arm, precision)),
        )
        for precision in budgets
        for arm in (NEOVERSE_N1, CORTEX_A76)
    ]


@needs_arm64
@pytest.mark.parametrize(("arm", "precision"), emulated_cases())
def test_the_classifier_answers_as_here(models: Models, arm: EmulatedCpu, precision: str) -> None:
    model = models.float32 if precision == "float32" else models.int8
    photos = models.photos[: photo_count(arm, precision)]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    emulated = run(arm, model, photos=photos, classifier=True)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (cpu_after.ru_utime + cpu_after.ru_stime) - (
        cpu_before.ru_utime + cpu_before.ru_stime
    )
    assert emulated.guest_cpu.startswith(cpu.ARM64), emulated.guest_cpu
    here = Classifier(model)
    # The same input arrays: ARM's decodes, run here.
    same_inputs = here.predict(emulated.inputs)
    difference = float(np.max(np.abs(emulated.probabilities - same_inputs)))
    # End to end: each side decodes the files itself.
    own_inputs = np.stack([here.preprocess(photo) for photo in photos])
    end_to_end = here.predict(own_inputs)
    decoding = np.abs(emulated.inputs - own_inputs)
    report = {
        "cpu": arm.command,
        "guest_cpu": emulated.guest_cpu,
        "precision": precision,
        "photos": [photo.name for photo in photos],
        "max_probability_difference_same_inputs": difference,
        "top1_equal_same_inputs": top1(emulated.probabilities) == top1(same_inputs),
        "top1_equal_end_to_end": top1(emulated.probabilities) == top1(end_to_end),
        "max_probability_difference_end_to_end": float(
            np.max(np.abs(emulated.probabilities - end_to_end))
        ),
        "decoded_values_differing": {
            photo.name: int(np.count_nonzero(row))
            for photo, row in zip(photos, decoding, strict=True)
        },
        "max_decoded_difference": float(decoding.max()),
        "emulated_cpu_seconds": round(cpu_seconds, 1),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"arm64-{arm.qemu_cpu}-{precision}.json").write_text(json.dumps(report, indent=1))
    if precision == "float32":
        assert difference <= MAX_FLOAT32_DIFFERENCE, report
    else:
        assert report["top1_equal_same_inputs"], report
        assert difference <= MAX_INT8_DIFFERENCE, report
    assert report["top1_equal_end_to_end"], report


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("asimd", "asimddp", "i8mm"), cpu.ARM64_I8MM),  # Graviton3 and 4, Apple M2 on
        (("asimd", "asimddp"), cpu.ARM64),  # Graviton2, Apple M1, Cortex-A76
        (("asimd",), cpu.ARM64_NEON),  # Graviton (Cortex-A72)
    ],
)
def test_arm_cpu_classes_follow_the_int8_kernels(flags: tuple[str, ...], expected: str) -> None:
    assert CpuFeatures.of("aarch64", flags).cpu_class == expected
    assert CpuFeatures.of("arm64", flags).cpu_class == expected


def test_the_made_up_cpuinfo_reads_as_its_cpu(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(NEOVERSE_N1.cpuinfo())
    features = CpuFeatures.detect(cpuinfo)
    assert features.instruction_sets == list(NEOVERSE_N1.instruction_sets)
    assert "CPU part\t: 0xd0c" in cpuinfo.read_text()


def test_macos_features_come_from_sysctl(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = (
        "hw.optional.AdvSIMD: 1\nhw.optional.arm.FEAT_DotProd: 1\nhw.optional.arm.FEAT_I8MM: 0\n"
    )
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    monkeypatch.setattr(
        subprocess, "run", lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, answer)
    )
    assert CpuFeatures.detect().cpu_class == cpu.ARM64


def test_int8_on_an_unverified_arm_class_is_logged_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    graviton3 = CpuFeatures.of("aarch64", {"asimd", "asimddp", "i8mm"})
    monkeypatch.setattr(CpuFeatures, "detect", lambda: graviton3)
    verification = {"cpus": [{"cpu_class": cpu.ARM64, "passed": True}]}
    with caplog.at_level(logging.INFO, logger="classifier.cpu"):
        cpu.log_cpu_support("int8", verification)
    assert f"CPU: {cpu.ARM64_I8MM}" in caplog.text
    assert "not verified on this CPU class (ARM64 with I8MM)" in caplog.text
    assert "make arm64-root" in caplog.text
