"""The ONNX model, its metadata and labels, behind one plain Python API.

``Classifier`` is what the web page, the tests, the benchmarks and scripts
all use. It loads the model once, checks it against its metadata, and
classifies images or batches of images into top-k labels. It imports only
numpy, Pillow, pyvips (through ``classifier.preprocess``) and onnxruntime:
what it does is reported to an ``Observer``, which the service plugs its
metrics into.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from classifier.admission import MemoryBudget
from classifier.assets import DEFAULT_MODEL_PATH
from classifier.batching import Batcher
from classifier.cpu import log_cpu_support
from classifier.errors import ClassifierError
from classifier.heap import peak_growth, release_after_large_decodes, release_freed_memory
from classifier.heatmap import (
    MAX_OVERLAY_SIDE,
    ClassWeights,
    NoHeatmapError,
    class_maps,
    normalise,
    overlay,
    overlay_cost,
)
from classifier.jail import DecoderJail
from classifier.labels import Label, LabelsError, read_labels
from classifier.metadata import ModelMetadata, metadata_path_for, sha256_of
from classifier.observer import Observer
from classifier.options import (
    DEFAULT_MAX_PIXELS,
    MB,
    TOP_K,
    AdmissionOptions,
    SessionOptions,
    available_cores,
)
from classifier.preprocess import ImageSource, decode_with_photo, normalize

log = logging.getLogger(__name__)

# ONNX Runtime 1.31 records every session it creates, in an SQLite file under
# ~/.cache/Microsoft, to send to Microsoft. A deployment reports nothing on its own;
# ORT_DISABLE_TELEMETRY=0 turns it back on. Read when the first session is created.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

CONVERT_HINT = "run `python convert_model.py` (see the README) to create it"


class ModelError(ClassifierError):
    """The model cannot be served; the message says what to do about it."""

    exit_code = 6


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    index: int
    class_id: str
    heatmap: np.ndarray | None = field(default=None, compare=False, repr=False)
    """With ``explain=True``: where the model saw this class, ``(h, w)`` float32 in
    0..1 at the last feature map's resolution (see ``classifier.heatmap``)."""


@dataclass(frozen=True)
class Classified:
    """One image's top classes and the photo they came from, decoded once for both."""

    predictions: list[Prediction]
    photo: Image.Image
    """The upload upright (EXIF orientation), RGB, in its own proportions, at most
    ``MAX_OVERLAY_SIDE`` a side: what ``Classifier.overlay`` draws on."""


def session_options(options: SessionOptions) -> ort.SessionOptions:
    """ONNX Runtime's own options, as ``options`` says and as a small server needs."""
    ort_options = ort.SessionOptions()
    ort_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    ort_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    ort_options.intra_op_num_threads = options.intra_op_threads or available_cores()
    ort_options.inter_op_num_threads = 1
    ort_options.enable_cpu_mem_arena = options.memory_arena
    # Planning one block for all activations ahead costs ~13 MB, saves no time.
    ort_options.enable_mem_pattern = False
    ort_options.log_severity_level = 3
    ort_options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if options.allow_spinning else "0"
    )
    return ort_options


def load_metadata(model_path: Path) -> ModelMetadata:
    """Read the model's metadata and check the model file against it."""
    if not model_path.is_file():
        raise ModelError(f"Model file {model_path} not found: {CONVERT_HINT}.")
    metadata_path = metadata_path_for(model_path)
    if not metadata_path.is_file():
        raise ModelError(
            f"Metadata file {metadata_path} not found beside the model: {CONVERT_HINT}."
        )
    try:
        metadata = ModelMetadata.from_json(metadata_path.read_text())
    except (ValueError, TypeError, KeyError) as error:
        raise ModelError(
            f"Metadata file {metadata_path} is damaged ({error}): {CONVERT_HINT}."
        ) from error
    actual_size = model_path.stat().st_size
    if actual_size != metadata.size_bytes or sha256_of(model_path) != metadata.sha256:
        raise ModelError(
            f"Model file {model_path} ({actual_size} bytes) does not match its "
            f"metadata ({metadata.size_bytes} bytes, sha256 {metadata.sha256[:12]}...): "
            f"it is truncated, corrupt or from another conversion; {CONVERT_HINT} again."
        )
    return metadata


def load_labels(path: Path, classes: int) -> list[Label]:
    """The labels file beside the model -> ``[(class_id, readable name), ...]`` by index."""
    try:
        labels = read_labels(path)
    except LabelsError as error:
        raise ModelError(f"{error} To fix it, {CONVERT_HINT} again.") from error
    if len(labels) != classes:
        raise ModelError(
            f"Labels file {path} has {len(labels)} labels for the model's {classes} classes: "
            f"{CONVERT_HINT} again."
        )
    return labels


def softmax(logits: np.ndarray) -> np.ndarray:
    """Logits ``(n, classes)`` -> probabilities, for models that output logits."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class Classifier:
    """An ONNX image classifier: load once, then classify from any thread.

    Every decode draws on one memory budget and model runs go one at a time,
    batching whoever waits, so concurrent callers queue rather than pile up.
    With ``warm=False`` the first run is left to ``warm_up``, which a server
    calls once it listens; ``ready`` tells when it is done.
    """

    def __init__(
        self,
        model_path: str | Path = DEFAULT_MODEL_PATH,
        session: SessionOptions | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        admission: AdmissionOptions | None = None,
        warm: bool = True,
        observer: Observer | None = None,
        isolate: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.metadata = load_metadata(self.model_path)
        self.labels = load_labels(
            self.model_path.parent / self.metadata.labels_file, self.metadata.classes
        )
        self.session_options = session or SessionOptions()
        self.max_pixels = max_pixels
        self.observer = observer or Observer()
        try:
            self._session = ort.InferenceSession(
                str(self.model_path),
                session_options(self.session_options),
                providers=["CPUExecutionProvider"],
            )
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise ModelError(
                f"onnxruntime cannot load {self.model_path} ({error}): {CONVERT_HINT} again."
            ) from error
        self._input_name = self._session.get_inputs()[0].name
        self._outputs = self._output_names()
        self._weights = self._class_weights()
        self._explaining = 0
        self._explaining_lock = threading.Lock()
        # Only what is fetched runs: the class maps cost nothing unless asked for.
        self._fetching = ort.RunOptions()
        self._fetching.only_execute_path_to_fetches = True
        self._settling = ort.RunOptions()
        self._settling.only_execute_path_to_fetches = True
        self._settling.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        admission = admission or AdmissionOptions()
        self.budget = MemoryBudget(
            admission.memory_budget_mb * MB,
            admission.timeout_s,
            admission.decoders,
            on_idle=release_after_large_decodes,
        )
        self._row_bytes: int | None = None
        """What each row after the first adds to a run's memory, once ``warm_up`` measured it."""
        self._run_batched = Batcher(self._run, admission.max_batch, spare=self._spare_rows)
        self.jail = (
            DecoderJail(
                admission.decoders,
                admission.decode_timeout_s,
                admission.timeout_s,
                admission.vips_threads,
            )
            if isolate
            else None
        )
        self.ready = False
        if warm:
            self.warm_up()
        log.info(
            "Loaded %s (%s, weights: %s)",
            self.model_path,
            self.metadata.precision,
            self.metadata.weights_source,
        )
        log_cpu_support(self.metadata.precision, self.metadata.verification)

    def warm_up(self) -> None:
        """One run at start, so the first user does not pay for lazy set-up."""
        spec = self.metadata.preprocessing
        if self.jail:
            self.jail.start()
        self.predict_explained(np.zeros((1, spec.height, spec.width, 3), np.float32), self.explains)
        release_freed_memory()  # what loading the session left: before a batch grows on it
        self._row_bytes = self._measure_row_bytes()
        self.ready = True

    def _measure_row_bytes(self) -> int:
        """What each row after the first adds to a run's memory, measured on a full batch:
        the most it grows, from where a batch that settled leaves the arena (a batch run
        there grows it by +23 MB for a float32 pair, against +16 after a single run).
        0 where the kernel keeps no high-water mark (macOS): batches then go uncounted."""
        rows = self._run_batched.max_batch
        if rows < 2:
            return 0
        spec = self.metadata.preprocessing
        batch = np.zeros((rows, spec.height, spec.width, 3), np.float32)
        self.predict(batch)  # a batch that settles
        grown = peak_growth(lambda: self.predict(batch))
        if grown is None:
            log.info("This system keeps no memory high-water mark: batches are not counted")
            return 0
        return grown // (rows - 1)

    def _spare_rows(self, rows: int) -> AbstractContextManager[bool]:
        """Memory for ``rows`` more rows in a model run, if the budget has it free now."""
        if self._row_bytes is None:  # not measured yet: every image runs alone
            return nullcontext(False)
        return self.budget.reserve_if_free(rows * self._row_bytes)

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """Decode within the memory budget, then make the model's input."""
        return self._decode(image).array

    def _decode(self, image: ImageSource, photo_side: int | None = None) -> _Input:
        """The model's input and, with ``photo_side``, the photo, from one decode in the budget."""
        spec = self.metadata.preprocessing
        start = time.perf_counter()
        try:
            if self.jail and not isinstance(image, Image.Image):
                isolated = self.jail.decode(
                    image,
                    spec,
                    self.max_pixels,
                    self.budget.reserve,
                    photo_side,
                    self.observer.context(),
                )
                pixels, photo = isolated.pixels, isolated.photo
            else:
                decoded = decode_with_photo(
                    image, spec, self.max_pixels, self.budget.reserve, photo_side
                )
                pixels, photo = np.asarray(decoded.input), decoded.photo
        finally:
            self.observer.decoded(time.perf_counter() - start)
        return _Input(normalize(pixels, spec), photo)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Model inputs ``(n, h, w, 3)`` -> probabilities ``(n, classes)``.

        Runs go one at a time; inputs of callers that arrive meanwhile go
        into the next run together.
        """
        return self.predict_explained(batch, explain=False)[0]

    def predict_explained(
        self, batch: np.ndarray, explain: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Model inputs -> probabilities and, with ``explain``, the last feature map
        ``(n, h, w, channels)`` from the same run (``heatmap.class_maps`` makes maps of it)."""
        self.check_explain(explain)
        start = time.perf_counter()
        try:
            with self._explained(explain):
                packed = self._run_batched(batch)
        finally:
            self.observer.inferred(time.perf_counter() - start)
        classes = self.metadata.classes
        scores = packed[:, :classes]
        if self.metadata.scores == "logits":
            scores = softmax(scores)
        if not explain:
            return scores, None
        assert self.metadata.heatmap is not None
        shape = self.metadata.heatmap.feature_map.shape[1:]
        return scores, packed[:, classes:].reshape(len(batch), *shape)

    @property
    def explains(self) -> bool:
        """Whether the model gives class activation maps (``explain=True``)."""
        return self.metadata.heatmap is not None

    def check_explain(self, explain: bool) -> None:
        """The one check of ``explain``, for every caller (the API, the page, scripts):
        ``NoHeatmapError`` where it is asked of a model that gives no heatmap."""
        if explain and not self.explains:
            raise NoHeatmapError(
                f"explain: {self.metadata.name} gives no heatmap: only models that end in "
                'global average pooling and a dense layer do (its metadata says "heatmap": '
                "null); leave explain out."
            )

    @contextmanager
    def _explained(self, explain: bool) -> Iterator[None]:
        """While an explaining caller waits, every run also fetches the feature map."""
        if not explain:
            yield
            return
        with self._explaining_lock:
            self._explaining += 1
        try:
            yield
        finally:
            with self._explaining_lock:
                self._explaining -= 1

    def _output_names(self) -> dict[bool, list[str]]:
        """The outputs a run fetches, without and with the feature map."""
        names = [self.metadata.output.name]
        heatmap = self.metadata.heatmap
        if heatmap is None:
            return {False: names, True: names}
        served = {output.name for output in self._session.get_outputs()}
        if heatmap.feature_map.name not in served:
            raise ModelError(
                f"{self.model_path} has no output {heatmap.feature_map.name!r}, which its "
                f"metadata promises: {CONVERT_HINT} again."
            )
        return {False: names, True: [*names, heatmap.feature_map.name]}

    def _class_weights(self) -> ClassWeights | None:
        """The dense kernel's rows, in the file beside the model (read a few at a time)."""
        heatmap = self.metadata.heatmap
        if heatmap is None:
            return None
        path = self.model_path.parent / heatmap.class_weights
        if not path.is_file() or sha256_of(path) != heatmap.class_weights_sha256:
            raise ModelError(
                f"Class weights file {path} is missing or does not match the model's "
                f"metadata: {CONVERT_HINT} again, and ship the file with the model."
            )
        try:
            weights = ClassWeights(path)
        except (ValueError, OSError) as error:
            raise ModelError(f"{path} cannot be read ({error}): {CONVERT_HINT} again.") from error
        channels = heatmap.feature_map.shape[-1]
        if weights.shape != (self.metadata.classes, channels):
            raise ModelError(
                f"{path} holds {weights.shape}, not ({self.metadata.classes}, {channels})."
            )
        return weights

    def _run(self, batch: np.ndarray, settle: bool) -> np.ndarray:
        """One model run; ``settle`` hands the arena's growth from batches back after it.

        While a caller waits for class maps, the feature map is fetched too, each
        row's packed after its scores, so the batcher splits them by row alike.
        """
        names = self._outputs[self._explaining > 0]
        options = self._settling if settle else self._fetching
        scores, *maps = self._session.run(names, {self._input_name: batch}, options)
        if not maps:
            return scores
        return np.concatenate([scores, maps[0].reshape(len(batch), -1)], axis=1)

    def top_k(
        self, probabilities: np.ndarray, k: int = TOP_K, features: np.ndarray | None = None
    ) -> list[Prediction]:
        """The ``k`` likeliest classes; with the image's ``features`` (``(h, w, c)``),
        each with its class activation map, normalised."""
        best = np.argsort(probabilities)[::-1][:k]
        maps = None if features is None else class_maps(features, self._weights, best)
        return [
            Prediction(
                label=self.labels[i][1],
                probability=float(probabilities[i]),
                index=int(i),
                class_id=self.labels[i][0],
                heatmap=None if maps is None else normalise(maps[..., rank]),
            )
            for rank, i in enumerate(best)
        ]

    def classify(
        self, image: ImageSource, k: int = TOP_K, explain: bool = False
    ) -> list[Prediction]:
        """One image (path, bytes, file object or PIL image) -> its top-k classes;
        with ``explain``, each with its class activation map (``Prediction.heatmap``)."""
        return self.classify_batch([image], k, explain)[0]

    def classify_batch(
        self, images: Sequence[ImageSource], k: int = TOP_K, explain: bool = False
    ) -> list[list[Prediction]]:
        """Several images -> their top-k classes, in one model run."""
        return [predictions for predictions, _ in self._classify(images, k, explain)]

    def classify_photo(
        self,
        image: ImageSource,
        k: int = TOP_K,
        explain: bool = False,
        photo_side: int = MAX_OVERLAY_SIDE,
    ) -> Classified:
        """One image -> its top-k classes and the upright photo from the same decode,
        at most ``photo_side`` a side, to draw ``overlay`` on or show as it was read."""
        ((predictions, photo),) = self._classify([image], k, explain, photo_side)
        assert photo is not None
        return Classified(predictions, photo)

    def _classify(
        self,
        images: Sequence[ImageSource],
        k: int,
        explain: bool,
        photo_side: int | None = None,
    ) -> list[tuple[list[Prediction], Image.Image | None]]:
        self.check_explain(explain)
        inputs = [self._decode(image, photo_side) for image in images]
        arrays = [decoded.array for decoded in inputs]
        batch = arrays[0][np.newaxis] if len(arrays) == 1 else np.stack(arrays)
        probabilities, features = self.predict_explained(batch, explain)
        return [
            (self.top_k(row, k, None if features is None else features[i]), inputs[i].photo)
            for i, row in enumerate(probabilities)
        ]

    def overlay(self, photo: Image.Image, heatmap: np.ndarray) -> Image.Image:
        """``photo`` (``Classified.photo``) with ``heatmap`` over it.

        The overlay's buffers draw on the memory budget, as a decode does.
        """
        with self.budget.reserve(overlay_cost(photo)):
            return overlay(photo, heatmap)


@dataclass(frozen=True)
class _Input:
    """One decode, ready for the model: its input array and, if asked for, its photo."""

    array: np.ndarray
    photo: Image.Image | None
