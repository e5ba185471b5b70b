"""The Gradio page: Image in, Label out, thin over ``Classifier``."""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
from fastapi import FastAPI

from classifier import internals, metrics, request_id
from classifier.api import error_handlers
from classifier.errors import ClassifierError
from classifier.metadata import ModelMetadata
from classifier.model import Classifier

log = logging.getLogger(__name__)

TOP_K = 5
MAX_FILE_SIZE = "20mb"
GRADIO_API = "/gradio_api/"
"""Gradio's own protocol: its client reads its errors' ``detail``, so they keep that shape."""
QUEUE_SIZE = 64
QUEUE_POLL_S = 0.005
"""How often Gradio's queue looks for new page events. Its default, 1 ms, wakes
the server 1,000 times a second, busy or idle (3% of a core at idle), taking
turns with the model's threads on a 2-core dyno."""
PROGRESS_POLL_S = 0.1
"""How often it looks for progress to report: the page reports none."""
CONCURRENCY = 8
"""Page requests classified at once; the memory budget decides how many decode."""
# Temporary uploads: swept every 10 minutes, once an hour old.
DELETE_CACHE = (600, 3600)
# After Classify: where the columns stack (phones), the answer is below the fold.
SHOW_ANSWER_JS = (
    "() => document.getElementById('answer').scrollIntoView({behavior: 'smooth', block: 'nearest'})"
)


def uploaded_image(**kwargs: object) -> gr.Image:
    """A ``gr.Image`` that hands the upload's path over undecoded, for our decoder to check."""
    image = gr.Image(type="filepath", **kwargs)
    internals.pass_upload_path(image)
    return image


def describe(metadata: ModelMetadata) -> str:
    """What the page does, and, set apart in bold, that random weights answer nonsense."""
    intro = (
        f"Drop a photo, or pick an example, to see the {min(TOP_K, metadata.classes)} most "
        f"likely of the {metadata.classes} classes {metadata.name} knows."
    )
    if metadata.weights_source != "random":
        return intro
    return (
        f"{intro}\n\n> **Demo only: these are random test weights, not trained ones, so the "
        "answers are meaningless.**"
    )


def provenance(metadata: ModelMetadata) -> str:
    """The model, its weights and how it was checked: below the app, out of a phone's way."""
    weights = metadata.weights
    if weights["source"] == "random":
        source = f"random test weights (seed {weights.get('seed')})"
    elif weights["source"] == "imagenet":
        source = "Keras' ImageNet weights"
    else:
        source = f"`{weights.get('file')}`"
    verification = metadata.verification
    checked = (
        f" Verified against {verification.get('against')}: top-1 agreement "
        f"{verification.get('top1_agreement', 0):.0%}, largest probability difference "
        f"{verification.get('max_abs_probability_diff', 1):.1g}."
        if verification.get("passed")
        else ""
    )
    model = metadata.name
    if metadata.architecture != metadata.name:
        model += f" (Keras model `{metadata.architecture}`)"
    return (
        f"Model: {model}, {metadata.precision} ONNX (opset {metadata.opset}, "
        f"{metadata.size_bytes / 1e6:.0f} MB), run by ONNX Runtime; weights: {source}.{checked}"
    )


def build_demo(classifier: Classifier, examples: list[Path]) -> gr.Blocks:
    """The page, with a stable ``/predict`` API endpoint for ``gradio_client``.

    The examples sit under the photo, so where the columns stack (phones) they
    stay by the input rather than below the answer; Classify then scrolls the
    answer on screen (Gradio 6.31's ``scroll_to_output`` does nothing).
    """

    def predict(image_path: str | None, request: gr.Request) -> dict[str, float]:
        request_id.current.set(request_id.request_id_from(request.headers.get(request_id.HEADER)))
        if image_path is None:
            raise gr.Error("Please upload an image first.")
        try:
            with metrics.observed("page"):
                predictions = classifier.classify(image_path, TOP_K)
        except ClassifierError as error:
            if error.server_fault:
                raise internal_error(error) from error
            # The visitor's to fix or to retry: the message stays until closed, and no
            # traceback goes to the server log.
            raise gr.Error(str(error), duration=None, print_exception=False) from error
        except Exception as error:
            raise internal_error(error) from error
        return {prediction.label: prediction.probability for prediction in predictions}

    metadata = classifier.metadata
    with gr.Blocks(
        title=f"{metadata.name} image classifier",
        analytics_enabled=False,
        delete_cache=DELETE_CACHE,
    ) as demo:
        gr.Markdown(f"# {metadata.name} image classifier\n{describe(metadata)}")
        label = gr.Label(
            num_top_classes=TOP_K, label=f"Top {TOP_K} classes", elem_id="answer", render=False
        )
        with gr.Row(equal_height=False):
            with gr.Column():
                image = uploaded_image(label="Photo", sources=["upload", "clipboard"])
                submit = gr.Button("Classify", variant="primary")
                # Wired before the examples, whose event would otherwise take "predict"
                # and leave this one the public "/predict_1".
                submit.click(
                    predict, image, label, api_name="predict", concurrency_limit=CONCURRENCY
                ).success(None, js=SHOW_ANSWER_JS)
                gr.Examples(
                    examples=[[str(path)] for path in examples],
                    inputs=image,
                    outputs=label,
                    fn=predict,
                    run_on_click=True,
                    cache_examples=False,
                    label="Or try an example",
                )
            with gr.Column():
                label.render()
        gr.Markdown(provenance(metadata))
    demo.queue(max_size=QUEUE_SIZE)
    internals.set_queue_polling(demo, QUEUE_POLL_S, PROGRESS_POLL_S)
    return demo


def internal_error(error: Exception) -> gr.Error:
    """A bug: logged with its traceback and the request id, which is all the visitor sees."""
    log.error("Unexpected error on the page", exc_info=error)
    metrics.UNEXPECTED_ERRORS.inc()
    return gr.Error(request_id.internal_error_message(), duration=None, print_exception=False)


def mount(api: FastAPI, demo: gr.Blocks) -> FastAPI:
    """The page at ``/`` of ``api``; paths it does not know get the API's error shape."""
    return gr.mount_gradio_app(
        api,
        demo,
        path="/",
        max_file_size=MAX_FILE_SIZE,
        show_error=False,
        app_kwargs={"exception_handlers": error_handlers(api, framework_prefix=GRADIO_API)},
    )
