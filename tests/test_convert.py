"""The converter: Keras InceptionV3 -> a verified, deterministic ONNX model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest

from classifier.assets import ROOT
from classifier.metadata import ModelMetadata, Preprocessing, sha256_of
from conversion.export import drop_noop_reshapes
from conversion.keras_model import keras_home
from conversion.verify import compare, keras_outputs, onnx_outputs, verification_inputs
from tests.support.converter import SEED, Converted, convert, run_converter
from tests.support.photos import CAT_PHOTO, COFFEE_PHOTO

CONVERTER = str(ROOT / "convert_model.py")
IMAGENET_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
"""The file Keras downloads for InceptionV3's ImageNet weights."""


def imagenet_weights_cache_path() -> Path:
    return keras_home() / "models" / IMAGENET_WEIGHTS_FILE


def read_metadata(model_path: Path) -> ModelMetadata:
    return ModelMetadata.from_json(model_path.with_suffix(".json").read_text())


def converter_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the converter as a user does, in its own interpreter."""
    return subprocess.run(
        [sys.executable, CONVERTER, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def save_legacy_h5(model: object, path: Path) -> None:
    """Write weights in the layout of Keras' published InceptionV3 ``.h5`` file.

    That file was written by Keras 2: one group per layer, listed in the
    ``layer_names`` attribute, each naming its arrays in ``weight_names``.
    """
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        file.attrs["backend"] = b"tensorflow"
        file.attrs["keras_version"] = b"2.1.5"
        for layer in model.layers:
            group = file.create_group(layer.name)
            names = [f"{layer.name}/{weight.name}:0" for weight in layer.weights]
            group.attrs["weight_names"] = [name.encode() for name in names]
            for name, weight in zip(names, layer.weights, strict=True):
                group.create_dataset(name, data=np.asarray(weight))


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# --- a conversion that passes -------------------------------------------------


def test_random_weights_convert_to_a_verified_model(converted: Converted) -> None:
    metadata = read_metadata(converted.model_path)
    assert metadata.weights == {"source": "random", "seed": SEED}
    assert metadata.input.name == "images"
    assert metadata.input.shape == [None, 299, 299, 3]
    assert metadata.output.name == "probabilities"
    assert metadata.output.shape == [None, 1000]
    assert metadata.opset == 17
    assert metadata.preprocessing == Preprocessing()
    verification = metadata.verification
    assert verification["passed"] is True
    assert verification["samples"] == 4  # two photos and two noise images
    assert verification["max_abs_logit_diff"] <= 1e-3 * verification["max_abs_logit"]
    assert verification["max_abs_probability_diff"] <= 1e-4
    assert verification["top5_agreement"] == 1.0
    for tool in ("tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime"):
        assert metadata.versions[tool]
    assert "PASSED on 4 inputs" in converted.stdout
    assert files_in(converted.model_path.parent) == [
        "imagenet_class_index.json",
        "inception_v3.class_weights.npy",
        "inception_v3.json",
        "inception_v3.onnx",
    ]


def test_model_has_stable_names_and_a_dynamic_batch(converted: Converted) -> None:
    graph = onnx.load(converted.model_path, load_external_data=False).graph
    assert [value.name for value in graph.input] == ["images"]
    assert [value.name for value in graph.output] == ["probabilities", "feature_map"]
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"


def test_metadata_sha256_matches_the_file(converted: Converted) -> None:
    metadata = read_metadata(converted.model_path)
    assert metadata.sha256 == sha256_of(converted.model_path)
    assert metadata.size_bytes == converted.model_path.stat().st_size


def test_labels_ship_beside_the_model(converted: Converted) -> None:
    labels = json.loads((converted.model_path.parent / "imagenet_class_index.json").read_text())
    assert len(labels) == 1000
    assert labels["281"] == ["n02123045", "tabby"]


# --- parity, checked on the written file, independently of the converter ------


def test_onnx_matches_keras_on_photos_and_noise(converted: Converted) -> None:
    inputs = verification_inputs([CAT_PHOTO, COFFEE_PHOTO], Preprocessing(), noise_count=3, seed=7)
    proto = onnx.load(converted.model_path)
    expected = keras_outputs(converted.keras_model, inputs)
    actual = onnx_outputs(proto, inputs)
    report = compare(expected, actual)
    assert report.passed, report.summary()
    probabilities, logits = actual
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # The logits carry the signal: they differ between inputs far more than
    # between Keras and ONNX.
    spread = np.ptp(logits, axis=0).max()
    assert report.max_abs_logit_diff < 1e-3 * spread


def test_comparison_fails_for_a_different_model(converted: Converted) -> None:
    """The check can fail: a second seed's outputs do not pass for the first's."""
    from conversion.keras_model import WeightsSource, build_model

    inputs = verification_inputs([CAT_PHOTO], Preprocessing(), noise_count=1)
    other = build_model(WeightsSource("random", seed=SEED + 1))
    report = compare(keras_outputs(converted.keras_model, inputs), keras_outputs(other, inputs))
    assert not report.passed


# --- determinism ----------------------------------------------------------------


@pytest.mark.slow
def test_same_weights_give_identical_bytes(converted: Converted, tmp_path: Path) -> None:
    second = tmp_path / "inception_v3.onnx"
    convert("--weights", "random", "--seed", str(SEED), "--output", str(second))
    assert sha256_of(second) == sha256_of(converted.model_path)
    assert read_metadata(second).sha256 == sha256_of(second)


@pytest.mark.parametrize(
    ("target", "allow_zero", "dropped"),
    [
        ([-1, 8, 1, 1], False, True),
        ([0, 8, 1, 1], False, True),
        ([2, 8, 1, 1], False, False),
        ([-1, 8], False, False),
        ([-1, 1, 8, 1], False, False),
        ([0, 8, 1, 1], True, False),
    ],
)
def test_only_reshapes_that_change_nothing_are_dropped(
    target: list[int], allow_zero: bool, dropped: bool
) -> None:
    """tf2onnx keeps one no-op Reshape or another from run to run (EfficientNet's
    squeeze-and-excite blocks); dropping every one makes the graph the same each time."""
    helper = onnx.helper
    reshape = helper.make_node("Reshape", ["x", "shape"], ["reshaped"], allowzero=int(allow_zero))
    graph = helper.make_graph(
        [reshape, helper.make_node("Relu", ["reshaped"], ["y"])],
        "squeeze_excite",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 8, 1, 1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array(target, np.int64), "shape")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    drop_noop_reshapes(proto)
    assert [node.op_type for node in proto.graph.node] == (
        ["Relu"] if dropped else ["Reshape", "Relu"]
    )
    assert proto.graph.node[-1].input[0] == ("x" if dropped else "reshaped")
    assert len(proto.graph.initializer) == (0 if dropped else 1)


# --- the check can fail ---------------------------------------------------------


def damage_one_weight(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Change one weight of the classifier's dense layer by a small amount."""
    largest = max(proto.graph.initializer, key=lambda tensor: np.prod(tensor.dims))
    weights = onnx.numpy_helper.to_array(largest).copy()
    weights.flat[0] += 0.05
    largest.CopyFrom(onnx.numpy_helper.from_array(weights, largest.name))
    return proto


@pytest.mark.slow
def test_damaged_model_is_refused_and_nothing_is_kept(
    converted: Converted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import conversion.export

    good_model = tmp_path / "inception_v3.onnx"
    good_bytes = converted.model_path.read_bytes()
    good_model.write_bytes(good_bytes)
    real_to_onnx = conversion.export.to_onnx
    monkeypatch.setattr(
        conversion.export, "to_onnx", lambda *args: damage_one_weight(real_to_onnx(*args))
    )

    code, _ = run_converter("--weights", "random", "--seed", str(SEED), "--output", str(good_model))

    assert code == 1
    assert "does not match Keras" in capsys.readouterr().err
    assert good_model.read_bytes() == good_bytes, "a good model was replaced"
    assert files_in(tmp_path) == ["inception_v3.onnx"], "something was left behind"


# --- weights files ----------------------------------------------------------------


@pytest.mark.slow
def test_legacy_h5_weights_convert_and_match_keras(tmp_path: Path) -> None:
    from conversion.keras_model import WeightsSource, build_model

    source = build_model(WeightsSource("random", seed=SEED + 1))
    weights_file = tmp_path / IMAGENET_WEIGHTS_FILE
    save_legacy_h5(source, weights_file)
    output = tmp_path / "out" / "inception_v3.onnx"

    convert("--weights", str(weights_file), "--output", str(output))

    metadata = read_metadata(output)
    assert metadata.weights["source"] == "file"
    assert metadata.weights["sha256"] == sha256_of(weights_file)
    inputs = verification_inputs([CAT_PHOTO], Preprocessing(), noise_count=1)
    # Compared with the model the file was written from, so the weights
    # really were loaded, not just whatever the converter built.
    report = compare(keras_outputs(source, inputs), onnx_outputs(onnx.load(output), inputs))
    assert report.passed, report.summary()


@pytest.mark.slow
def test_keras3_weights_file_converts(tmp_path: Path) -> None:
    from conversion.keras_model import WeightsSource, build_model

    source = build_model(WeightsSource("random", seed=SEED + 2))
    weights_file = tmp_path / "inception_v3.weights.h5"
    source.save_weights(weights_file)
    output = tmp_path / "inception_v3.onnx"

    convert("--weights", str(weights_file), "--output", str(output))

    inputs = verification_inputs([COFFEE_PHOTO], Preprocessing(), noise_count=1)
    report = compare(keras_outputs(source, inputs), onnx_outputs(onnx.load(output), inputs))
    assert report.passed, report.summary()


# --- errors users will hit ------------------------------------------------------


def assert_clean_failure(result: subprocess.CompletedProcess, code: int, *phrases: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr


def test_no_network_for_imagenet_weights_says_how_to_supply_them(tmp_path: Path) -> None:
    # An empty Keras cache, and every download sent to a closed local port.
    offline = {"KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": "http://127.0.0.1:9"}
    output = tmp_path / "out" / "inception_v3.onnx"
    result = converter_process("--weights", "imagenet", "--output", str(output), env=offline)
    assert_clean_failure(
        result, 3, "Could not download the ImageNet weights", "--weights PATH", "KERAS_HOME"
    )
    assert str(tmp_path / "keras" / "models" / IMAGENET_WEIGHTS_FILE) in result.stderr
    assert not output.exists()


def test_missing_weights_file(tmp_path: Path) -> None:
    result = converter_process(
        "--weights", str(tmp_path / "nope.h5"), "--output", str(tmp_path / "m.onnx")
    )
    assert_clean_failure(result, 3, "nope.h5 not found")


@pytest.mark.slow  # builds and saves a Keras model of its own
def test_weights_of_another_architecture(tmp_path: Path) -> None:
    import keras

    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    weights_file = tmp_path / "small.weights.h5"
    small.save_weights(weights_file)
    result = converter_process("--weights", str(weights_file), "--output", str(tmp_path / "m.onnx"))
    assert_clean_failure(result, 3, "does not hold InceptionV3 weights")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow  # builds and saves a Keras model of its own
def test_weights_with_a_wrong_shape(converted: Converted, tmp_path: Path) -> None:
    weights_file = tmp_path / "wrong_shape.h5"
    save_legacy_h5(converted.keras_model, weights_file)
    with h5py.File(weights_file, "r+") as file:
        head = converted.keras_model.layers[-1].name
        kernel = f"{head}/{head}/kernel:0"
        del file[kernel]
        file.create_dataset(kernel, data=np.zeros((2048, 10), np.float32))
    result = converter_process("--weights", str(weights_file), "--output", str(tmp_path / "m.onnx"))
    assert_clean_failure(result, 3, "does not hold InceptionV3 weights", "(2048, 10)")


def test_unwritable_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = converter_process("--weights", "random", "--output", str(blocker / "m.onnx"))
    assert_clean_failure(result, 4, "Cannot write to the output folder")


def test_output_must_be_an_onnx_file(tmp_path: Path) -> None:
    result = converter_process("--weights", "random", "--output", str(tmp_path / "m.bin"))
    assert result.returncode == 2
    assert "--output must end in .onnx" in result.stderr


# --- the real ImageNet weights, where a developer has them ----------------------


@pytest.mark.skipif(
    not imagenet_weights_cache_path().is_file(),
    reason=f"Keras' ImageNet weights are not in the Keras cache ({imagenet_weights_cache_path()})",
)
@pytest.mark.slow
def test_imagenet_weights_see_a_cat(tmp_path: Path) -> None:
    from classifier.model import Classifier

    output = tmp_path / "inception_v3.onnx"
    convert("--weights", "imagenet", "--output", str(output))
    top5 = Classifier(output).classify(CAT_PHOTO)
    cats = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}
    assert cats & {prediction.label for prediction in top5}


def test_weights_description_round_trips(tmp_path: Path) -> None:
    from conversion.errors import WeightsError
    from conversion.keras_model import WeightsSource

    random = WeightsSource("random", seed=3)
    assert WeightsSource.from_description(random.describe(), tmp_path) == random
    weights_file = tmp_path / "w.weights.h5"
    weights_file.write_bytes(b"weights")
    from_file = WeightsSource("file", path=weights_file)
    assert WeightsSource.from_description(from_file.describe(), tmp_path) == from_file
    with pytest.raises(WeightsError, match="not found"):
        WeightsSource.from_description(from_file.describe(), tmp_path / "elsewhere")


# --- exit codes: carried by the errors themselves -------------------------------


def test_a_refusal_s_subclass_exits_with_its_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Each error carries its exit code (``ClassifierError.exit_code``), so a
    subclass needs no table entry of its own."""
    import convert_model
    from conversion.errors import WeightsError

    class MirrorDownError(WeightsError):
        """A more specific weights error."""

    def convert(args: object) -> None:
        raise MirrorDownError("The mirror is down.\nTry later.")

    monkeypatch.setattr(convert_model, "convert", convert)
    code = convert_model.main(["--weights", "random", "--output", str(tmp_path / "m.onnx")])
    assert code == 3
    assert capsys.readouterr().err == "error: The mirror is down. Try later.\n"


def test_the_readme_lists_every_exit_code() -> None:
    from conversion.errors import REFUSALS, exit_codes

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Exit codes") :].split("\n\n")[2]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    carried = {error.exit_code for error in REFUSALS}
    assert documented == {0, 2} | carried
    assert f"Exit codes: {exit_codes()}" in " ".join(converter_help().split())


def converter_help() -> str:
    import contextlib
    import io

    import convert_model

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit):
        convert_model.parse_args(["--help"])
    return stdout.getvalue()
