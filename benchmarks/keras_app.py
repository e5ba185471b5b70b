"""The same Gradio page served by Keras: the baseline for start-up and memory.

Not part of the app. It stands for the Keras app this project replaces: Image
in, Label out (top 5) at ``/predict``, Keras' own preprocessing (``load_img``
+ ``preprocess_input``) and ``model.predict``, on the weights an ONNX model
was converted from (its metadata) or on ``--weights``. Like ``app.py`` it
binds ``HOST`` / ``PORT`` as ours does; ``startup.py`` and
``memory.py`` launch it through the Procfile's command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

from benchmarks.common import DEFAULT_MODEL, keras_weights
from classifier.assets import EXAMPLE_PHOTOS, LABELS
from classifier.options import TOP_K


def main() -> int:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument(
        "--model",
        type=Path,
        default=Path(os.environ.get("MODEL_PATH") or DEFAULT_MODEL),
        help="the ONNX model whose metadata names the weights (default: $MODEL_PATH)",
    )
    arguments.add_argument(
        "--weights",
        help="'imagenet', 'random' or a Keras weights file, instead of reading "
        "the model's metadata",
    )
    arguments.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    args = arguments.parse_args()

    import gradio as gr
    import keras
    import numpy as np

    from conversion.keras_model import WeightsSource, build_model

    weights = (
        WeightsSource.parse(args.weights, args.seed) if args.weights else keras_weights(args.model)
    )
    model = build_model(weights)
    index = json.loads(LABELS.read_text())
    labels = [index[str(i)][1] for i in range(len(index))]
    lock = threading.Lock()  # as in our app: one model run at a time

    def predict(image_path: str | None) -> dict[str, float]:
        if image_path is None:
            raise gr.Error("Please upload an image first.")
        image = keras.utils.load_img(image_path, target_size=(299, 299), interpolation="bilinear")
        batch = keras.applications.inception_v3.preprocess_input(
            keras.utils.img_to_array(image)[np.newaxis]
        )
        with lock:
            probabilities = model.predict(batch, verbose=0)[0]
        best = np.argsort(probabilities)[::-1][:TOP_K]
        return {labels[i]: float(probabilities[i]) for i in best}

    with gr.Blocks(title="InceptionV3 image classifier (Keras)", analytics_enabled=False) as demo:
        gr.Markdown(f"# InceptionV3 image classifier (Keras)\nWeights: {weights.describe()}")
        label = gr.Label(num_top_classes=TOP_K, label=f"Top {TOP_K} classes", render=False)
        with gr.Row(equal_height=False):
            with gr.Column():
                image = gr.Image(type="filepath", label="Photo", sources=["upload", "clipboard"])
                submit = gr.Button("Classify", variant="primary")
                # Before the examples, as in ours: else theirs would take "/predict".
                submit.click(predict, image, label, api_name="predict", concurrency_limit=4)
                gr.Examples(
                    examples=[[str(path)] for path in EXAMPLE_PHOTOS],
                    inputs=image,
                    outputs=label,
                    fn=predict,
                    run_on_click=True,
                    cache_examples=False,
                )
            with gr.Column():
                label.render()
    demo.queue(max_size=64).launch(
        server_name=os.environ.get("HOST", "127.0.0.1"),
        server_port=int(os.environ.get("PORT", "7860")),
        max_file_size="20mb",
        show_error=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
