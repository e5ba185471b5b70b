"""The Gradio page: Image in, Label out, thin over ``Classifier``."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from classifier.metadata import ModelMetadata
from classifier.model import Classifier
from classifier.preprocess import ImageError

TOP_K = 5
MAX_FILE_SIZE = "20mb"
QUEUE_SIZE = 64
# Temporary uploads: swept every 10 minutes, once an hour old.
DELETE_CACHE = (600, 3600)


def uploaded_image(**kwargs: object) -> gr.Image:
    """A ``gr.Image`` that hands the upload's path over undecoded.

    Stock ``gr.Image`` opens every upload with Pillow before our code sees
    it, so a corrupt file or a decompression bomb would fail inside Gradio,
    with no message for the user. Our preprocessing checks and decodes it
    instead. (A subclass would do the same, but Gradio writes a ``.pyi``
    stub beside the module of every component class it sees.)
    """
    image = gr.Image(type="filepath", **kwargs)
    image.preprocess = lambda payload: None if payload is None else payload.path
    return image


def describe(metadata: ModelMetadata) -> str:
    """The page's description: the model, its weights and how it was checked."""
    weights = metadata.weights
    if weights.get("source") == "random":
        source = (
            f"**random test weights (seed {weights.get('seed')}), not ImageNet's: "
            "the answers are meaningless.** This is a demo of the machinery only."
        )
    elif weights.get("source") == "imagenet":
        source = "Keras' ImageNet weights"
    else:
        source = f"weights from `{weights.get('file')}`"
    verification = metadata.verification
    checked = (
        f" Verified against {verification['against'].capitalize()}: largest probability "
        f"difference {verification['max_abs_probability_diff']:.1g}."
        if verification.get("passed")
        else ""
    )
    return (
        f"Drop a photo to see {metadata.architecture}'s top {TOP_K} of 1000 ImageNet "
        f"classes. Model: {metadata.architecture}, {metadata.precision} ONNX "
        f"(opset {metadata.opset}, {metadata.size_bytes / 1e6:.0f} MB), run by ONNX "
        f"Runtime; weights: {source}{checked}"
    )


def build_demo(classifier: Classifier, examples: list[Path]) -> gr.Blocks:
    """The page, with a stable ``/predict`` API endpoint for ``gradio_client``."""

    def predict(image_path: str | None) -> dict[str, float]:
        if image_path is None:
            raise gr.Error("Please upload an image first.")
        try:
            predictions = classifier.classify(image_path, TOP_K)
        except ImageError as error:
            raise gr.Error(str(error)) from error
        return {prediction.label: prediction.probability for prediction in predictions}

    metadata = classifier.metadata
    with gr.Blocks(
        title=f"{metadata.architecture} image classifier",
        analytics_enabled=False,
        delete_cache=DELETE_CACHE,
    ) as demo:
        gr.Markdown(f"# {metadata.architecture} image classifier\n{describe(metadata)}")
        with gr.Row(equal_height=False):
            with gr.Column():
                image = uploaded_image(label="Photo", sources=["upload", "clipboard"])
                submit = gr.Button("Classify", variant="primary")
            with gr.Column():
                label = gr.Label(num_top_classes=TOP_K, label=f"Top {TOP_K}")
        gr.Examples(
            examples=[[str(path)] for path in examples],
            inputs=image,
            outputs=label,
            fn=predict,
            run_on_click=True,
            cache_examples=False,
        )
        submit.click(predict, image, label, api_name="predict", concurrency_limit=4)
    return demo
