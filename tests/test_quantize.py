"""The int8 model: calibrated on real photos, checked against float32 on others,
on this CPU and as an AVX2 CPU without VNNI (``qemu-x86_64 -cpu Haswell``).

Random weights give near-uniform outputs, where top-1 agreement means
nothing, and even scaled up (``conversion.synthetic``'s confident weights)
their random features leave a few photos near ties that rounding decides.
So these tests quantize a model that is decided about every shared photo by
construction: seeded random convolutions under a prototype head, whose
column for each photo's class is that photo's own pooled feature, centred
and normalised, scaled until the top class takes about 0.8 of the
probability (``write_prototype_weights``). Any loss of fidelity then shows
as lost agreement. The converter's own bars, 99% top-1 agreement and 0.01
between CPUs, apply to it unchanged, on all 50 held-out photos, natively
and as a Haswell.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from classifier import cpu
from classifier.cpu import CpuFeatures
from classifier.metadata import ModelMetadata, Preprocessing, sha256_of
from classifier.model import Classifier
from conversion.emulation import HASWELL, NEHALEM, qemu_available
from conversion.quantize import VNNI, Verifier, model_inputs, probabilities, quantize_int8
from conversion.synthetic import labelled_photos
from tests.support.budgets import X86_INT8
from tests.support.converter import run_converter
from tests.support.models import EMULATED_PHOTOS, Prototype
from tests.support.photos import IMAGENET_SAMPLE

FEW_PHOTOS = 4
"""Saturation moves most photos' probabilities by 0.1 or more: a few photos catch it."""

needs_qemu = pytest.mark.skipif(
    not qemu_available(), reason="qemu-x86_64 is not installed (apt-get install qemu-user)"
)


def quantize(float_model: Path, *args: str) -> tuple[int, str]:
    return run_converter("--output", str(float_model), "--quantize", "int8", *args)


def copy_float_model(prototype: Prototype, folder: Path) -> Path:
    """The float32 model with its metadata and labels, in ``folder``, to quantize apart."""
    folder.mkdir()
    for name in ("inception_v3.onnx", "inception_v3.json", "imagenet_class_index.json"):
        shutil.copy(prototype.float_model.parent / name, folder / name)
    return folder / "inception_v3.onnx"


def test_the_test_model_is_decided_about_every_photo(prototype: Prototype) -> None:
    """By construction each photo's top class is its own, clear of the next."""
    classes = labelled_photos(IMAGENET_SAMPLE)
    photos = prototype.calibration + prototype.verification
    outputs = probabilities(
        prototype.float_model, np.concatenate(list(model_inputs(photos, Preprocessing())))
    )
    assert [int(row.argmax()) for row in outputs] == [classes[photo] for photo in photos]
    best = np.sort(outputs, axis=1)
    assert np.median(best[:, -1]) == pytest.approx(0.8, abs=0.02)


def test_int8_model_is_written_with_its_metadata(prototype: Prototype) -> None:
    metadata = ModelMetadata.from_json(prototype.int8_model.with_suffix(".json").read_text())
    float_metadata = ModelMetadata.from_json(prototype.float_model.with_suffix(".json").read_text())
    assert metadata.precision == "int8"
    assert metadata.sha256 == sha256_of(prototype.int8_model)
    assert metadata.weights == float_metadata.weights
    assert metadata.preprocessing == float_metadata.preprocessing
    assert metadata.input == float_metadata.input
    assert metadata.calibration["photos"] == 50
    assert metadata.calibration["scheme"] == "portable"
    assert metadata.calibration["weights"] == "QInt8, 7-bit, per channel"
    assert len(metadata.calibration["sha256"]) == 64
    assert metadata.calibration["verification_photos"] == len(prototype.verification) == 50
    verification = metadata.verification
    assert verification["against"] == "float32 ONNX"
    assert verification["samples"] == len(prototype.verification)
    assert verification["top1_agreement"] >= 0.99
    assert 0.0 < verification["top5_overlap"] <= 1.0
    here = verification["cpus"][0]
    assert here["measured_on"] == "this machine"
    assert here["cpu_class"] == CpuFeatures.detect().cpu_class
    assert here["instruction_sets"] == CpuFeatures.detect().instruction_sets
    assert here["passed"] is True
    assert "held-out photos: top-1 agreement" in prototype.stdout


@needs_qemu
def test_int8_model_agrees_with_float32_as_an_avx2_cpu(prototype: Prototype) -> None:
    """The converter ran it under qemu as a Haswell; where the 8-bit model's
    probabilities moved by 0.12, these must match this machine's within 0.01
    (7-bit weights leave only float rounding: ~1e-7)."""
    metadata = ModelMetadata.from_json(prototype.int8_model.with_suffix(".json").read_text())
    assert "Haswell" not in metadata.verification.get("note", "")  # ARM64 may lack its root
    emulated = metadata.verification["cpus"][1]
    assert emulated["cpu_class"] == cpu.X86_AVX2
    assert emulated["measured_on"] == "qemu-x86_64 -cpu Haswell"
    assert "avx2" in emulated["instruction_sets"]
    assert "avx512_vnni" not in emulated["instruction_sets"]
    assert emulated["samples"] == EMULATED_PHOTOS
    assert emulated["top1_agreement"] >= 0.99
    assert emulated["cpu_difference"] <= 0.01
    assert emulated["passed"] is True
    assert "qemu-x86_64 -cpu Haswell" in prototype.stdout


@needs_qemu
@pytest.mark.skipif(
    CpuFeatures.detect().cpu_class != cpu.X86_VNNI,
    reason="this CPU has no VNNI: the 8-bit model saturates here as on Haswell, so the "
    "two CPUs agree and there is no difference to catch",
)
@X86_INT8.timeout(FEW_PHOTOS, quantizes=True)
def test_the_emulated_check_refuses_the_old_8_bit_model(prototype: Prototype) -> None:
    """uint8 x int8 with 8-bit weights, as before: VNNI computes it exactly,
    but an AVX2 CPU without VNNI saturates, and the check must say so."""
    spec = Preprocessing()
    old = quantize_int8(prototype.float_model, prototype.calibration, spec, "images", VNNI)
    verifier = Verifier(prototype.float_model, prototype.verification[:FEW_PHOTOS], spec, 0.99)
    _, native = verifier.on_this_machine(old)
    check = verifier.emulated(old, native, FEW_PHOTOS, max_cpu_difference=0.01)
    assert check.cpu_difference > 0.05
    assert not check.passed
    assert "BEYOND 0.01" in check.summary()


@needs_qemu
@X86_INT8.timeout(2)
def test_sse_only_cpus_answer_alike_too(prototype: Prototype) -> None:
    """ONNX Runtime's SSE4.1 kernels widen to 16 bits before multiplying: no saturation."""
    verifier = Verifier(prototype.float_model, prototype.verification[:2], Preprocessing(), 0.99)
    _, native = verifier.on_this_machine(prototype.int8_model)
    check = verifier.emulated(prototype.int8_model, native, 2, 0.01, NEHALEM)
    assert check.cpu_class == cpu.X86_SSE
    assert check.passed, check.summary()


def test_int8_model_is_about_three_times_smaller(prototype: Prototype) -> None:
    # int8 weights are a quarter of float32's; the float32 head adds 8 MB.
    ratio = prototype.int8_model.stat().st_size / prototype.float_model.stat().st_size
    assert 0.25 < ratio < 0.35


def test_int8_model_holds_quantized_weights(prototype: Prototype) -> None:
    graph = onnx.load(prototype.int8_model).graph
    operators = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= operators
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(np.prod(t.dims) for t in int8_weights) > 20_000_000


def test_the_app_api_serves_the_int8_model(prototype: Prototype) -> None:
    int8 = Classifier(prototype.int8_model)
    assert int8.metadata.precision == "int8"
    photos = prototype.verification[:5]
    answers = [int8.classify(photo) for photo in photos]
    assert all(len(top) == 5 for top in answers)
    # The test model puts each shared photo's own class on top, confidently.
    assert [top[0].index for top in answers] == [
        labelled_photos(IMAGENET_SAMPLE)[p] for p in photos
    ]
    assert np.median([top[0].probability for top in answers]) > 0.5


def test_disagreeing_int8_model_is_refused_and_nothing_is_kept(
    prototype: Prototype, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Calibrated on flat gray images, activation ranges are far too narrow for
    real photos, so the int8 model disagrees and must be refused."""
    gray = tmp_path / "gray"
    gray.mkdir()
    for level in (100, 120, 140, 160):
        Image.new("RGB", (64, 64), (level, level, level)).save(gray / f"gray{level}.png")
    float_copy = copy_float_model(prototype, tmp_path / "model")
    before = sorted(p.name for p in float_copy.parent.iterdir())

    code, stdout = quantize(
        float_copy,
        "--calibration",
        str(gray),
        "--verification",
        str(IMAGENET_SAMPLE),
    )

    assert code == 1, stdout
    assert "disagrees with float32" in capsys.readouterr().err
    assert "FAILED" in stdout
    assert sorted(p.name for p in float_copy.parent.iterdir()) == before


def test_without_qemu_the_metadata_and_output_say_what_was_not_checked(
    prototype: Prototype, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("conversion.emulation.qemu_available", lambda cpu=None: False)
    float_copy = copy_float_model(prototype, tmp_path / "model")

    code, stdout = quantize(
        float_copy,
        "--calibration",
        str(prototype.int8_model.parent / "calibration"),
        "--verification",
        str(prototype.int8_model.parent / "verification"),
    )

    assert code == 0, stdout
    assert "NOTE not checked as an AVX2 CPU without VNNI" in stdout
    metadata = ModelMetadata.from_json(float_copy.with_suffix(".int8.json").read_text())
    assert "qemu-x86_64 -cpu Haswell is missing" in metadata.verification["note"]
    assert [c["measured_on"] for c in metadata.verification["cpus"]] == ["this machine"]


def test_calibration_folder_must_exist(prototype: Prototype, tmp_path: Path, capsys) -> None:
    code, _ = quantize(prototype.float_model, "--calibration", str(tmp_path / "nowhere"))
    assert code == 5
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("machine", "flags", "expected"),
    [
        ("x86_64", HASWELL.instruction_sets, cpu.X86_AVX2),
        ("x86_64", NEHALEM.instruction_sets, cpu.X86_SSE),
        ("x86_64", ("avx2", "avx512f", "avx512bw"), cpu.X86_AVX512),
        ("x86_64", ("avx2", "avx512f", "avx512bw", "avx512_vnni"), cpu.X86_VNNI),
        ("x86_64", ("avx2", "avx_vnni"), cpu.X86_VNNI),
        ("aarch64", ("asimd", "asimddp"), cpu.ARM64),
    ],
)
def test_cpu_class_follows_the_int8_kernels(machine: str, flags: tuple, expected: str) -> None:
    assert CpuFeatures.of(machine, flags).cpu_class == expected


def test_cpu_features_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n")
    features = CpuFeatures.detect(cpuinfo)
    assert features.flags == {"fpu", "sse4_2", "avx", "avx2", "fma"}
    assert features.instruction_sets == ["sse4_2", "avx", "avx2", "fma"]


def test_serving_int8_on_an_unverified_cpu_class_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(CpuFeatures, "detect", lambda: CpuFeatures.of("x86_64", {"avx2"}))
    verification = {"cpus": [{"cpu_class": cpu.X86_VNNI, "passed": True}]}
    with caplog.at_level(logging.INFO, logger="classifier.cpu"):
        cpu.log_cpu_support("float32", verification)
        assert "not verified" not in caplog.text
        cpu.log_cpu_support("int8", {"cpus": [{"cpu_class": cpu.X86_AVX2, "passed": True}]})
        assert "not verified" not in caplog.text
        cpu.log_cpu_support("int8", verification)
    assert f"CPU: {cpu.X86_AVX2}" in caplog.text
    assert f"not verified on this CPU class ({cpu.X86_AVX2})" in caplog.text
