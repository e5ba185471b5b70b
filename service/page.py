"""The Gradio page: a photo (uploaded, pasted or from the camera) or several in,
labels and heatmaps out, thin over ``Classifier``."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
from fastapi import FastAPI
from PIL import Image
from starlette.middleware import Middleware
from starlette.routing import Mount

from classifier.errors import ClassifierError
from classifier.heatmap import jpeg
from classifier.metadata import ModelMetadata
from classifier.model import Classified, Classifier
from classifier.options import TOP_K
from service import internals, metrics, request_id
from service.api import BATCH_FILES, error_handlers
from service.guard import NOT_UPLOADED, PageGuard, client_of
from service.request_id import RequestContext
from service.settings import Settings

if TYPE_CHECKING:
    from service.feedback import Feedback

log = logging.getLogger(__name__)

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
UPLOAD_FILES = BATCH_FILES
"""Files one upload request may carry: the photo box sends one, the box for several
photos at once up to ``BATCH_FILES`` together."""
STATE_PHOTO_SIDE = 640
"""The photo a session keeps to draw heatmaps on, at most this a side, as a JPEG."""
STATE_TTL_S = 900
"""A session's classifications are dropped this long after they were made."""
PAGE_SESSIONS = 32
"""Page sessions the server keeps, the least recently used dropped first (Gradio's
default: 10,000). Each holds Gradio's copy of the page's config (~80 kB with the
feedback's 1,000 labels) and its classifications (~55 kB each, a gallery of 16:
~0.9 MB). Any client names a new session in every event it sends: at Gradio's
default, 1,000 cheap events (15 s) held +91 MB, and a few minutes of them a dyno."""
REAR_CAMERA = gr.WebcamOptions(
    mirror=False, constraints={"video": {"facingMode": {"ideal": "environment"}}}
)
"""The camera as a source: a phone's rear one where the browser offers a choice."""
HEIF_TYPES = [".heic", ".heif", ".avif"]
"""Not every browser counts these as ``image/*`` in its file chooser."""
CLEAR_JS = "() => null"
# After Classify: where the columns stack (phones), the answer is below the fold.
SHOW_ANSWER_JS = (
    "() => document.getElementById('answer').scrollIntoView({behavior: 'smooth', block: 'nearest'})"
)


def uploaded_image(demo: gr.Blocks, **kwargs: object) -> gr.Image:
    """A ``gr.Image`` that hands the path of a file ``demo`` holds over undecoded, for our
    decoder to check."""
    image = gr.Image(type="filepath", **kwargs)
    internals.pass_upload_path(image, demo, NOT_UPLOADED)
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


Explanation = dict[str, Any]
"""What the page keeps of one classified photo, in the session's state: its answer,
the top classes' labels and maps (lists, which Gradio's state compares), the
photo decoded for the classification as a small JPEG (``STATE_PHOTO_SIDE``,
~50 kB) and the id of the request that classified it, for feedback on it.
Never the upload or full-size pixels: ``PAGE_SESSIONS`` sessions share a 512 MB
dyno, and the state is dropped after ``STATE_TTL_S`` besides."""


def explanation(classified: Classified) -> Explanation:
    predictions = classified.predictions
    return {
        "answer": {p.label: p.probability for p in predictions},
        "labels": [p.label for p in predictions],
        "maps": [None if p.heatmap is None else p.heatmap.tolist() for p in predictions],
        "photo": jpeg(classified.photo),
    }


def kept_photo(explained: Explanation) -> Image.Image:
    return Image.open(io.BytesIO(explained["photo"]))


def heatmap_view(
    classifier: Classifier, explained: Explanation | None, choice: str | None, show: bool
) -> Image.Image | None:
    """The photo with ``choice``'s heatmap over it (the top class's if none), or bare."""
    if not explained:
        return None
    labels = explained["labels"]
    index = labels.index(choice) if choice in labels else 0
    photo = kept_photo(explained)
    if not show or explained["maps"][index] is None:
        return photo
    try:
        return classifier.overlay(photo, np.asarray(explained["maps"][index]))
    except Exception as error:
        raise page_error(error) from error


def caption(explained: Explanation) -> str:
    label, probability = next(iter(explained["answer"].items()))
    return f"{label} {probability:.0%}"


def build_demo(
    classifier: Classifier, examples: list[Path], feedback: Feedback | None = None
) -> gr.Blocks:
    """The page, with stable API endpoints for ``gradio_client``: ``/predict`` (one
    image -> its label, as ever) and ``/predict_many`` (several -> the gallery).

    With ``feedback``, "Right" and "Wrong: it is ..." under each answer
    (``service.feedback_page``).

    Several photos are classified one after another, each through the same
    memory budget and batcher as any request, so a refused one fails alone.
    The examples sit under the photo, so where the columns stack (phones) they
    stay by the input rather than below the answer; Classify then scrolls the
    answer on screen (Gradio 6.31's ``scroll_to_output`` does nothing).
    """

    def classified(image_path: str) -> Explanation:
        """One photo through ``Classifier``, counted in the page's metrics."""
        with metrics.observed("page"):
            answer = explanation(
                classifier.classify_photo(
                    image_path, TOP_K, explain=classifier.explains, photo_side=STATE_PHOTO_SIDE
                )
            )
        return {**answer, "request_id": request_id.current.get()}

    def classify(
        image_path: str | None, request: gr.Request
    ) -> tuple[dict[str, float], Explanation]:
        request_id.adopt(request.headers)
        if image_path is None:
            raise gr.Error("Please upload an image first.", print_exception=False)
        try:
            explained = classified(image_path)
        except Exception as error:
            raise page_error(error) from error
        return explained["answer"], explained

    def classify_many(
        paths: list[str] | None, request: gr.Request
    ) -> tuple[list[tuple[Image.Image, str]], list[Explanation], dict[str, float], Explanation]:
        """Each photo on its own: the gallery shows those classified, a warning names the
        rest; the first one's answer and heatmap show until another is picked."""
        request_id.adopt(request.headers)
        if not paths:
            raise gr.Error("Please choose one or more photos first.", print_exception=False)
        if len(paths) > BATCH_FILES:
            raise gr.Error(
                f"Please choose at most {BATCH_FILES} photos at once.", print_exception=False
            )
        results, refused = [], []
        for path in paths:
            try:
                results.append(classified(path))
            except ClassifierError as error:
                if error.server_fault:
                    raise page_error(error) from error
                refused.append(f"{Path(path).name}: {error}")
            except Exception as error:
                raise page_error(error) from error
        if refused:
            message = "Not classified: " + "; ".join(refused)
            if not results:
                raise gr.Error(message, duration=None, print_exception=False)
            gr.Warning(message, duration=None)
        gallery = [(kept_photo(result), caption(result)) for result in results]
        return gallery, results, results[0]["answer"], results[0]

    def picked(results: list[Explanation] | None, selected: gr.SelectData) -> tuple[Any, Any]:
        """A photo picked in the gallery: its answer, and its heatmap through the state."""
        if not results or selected.index is None:
            return None, None
        chosen = results[selected.index]
        return chosen["answer"], chosen

    def explained_answer(explained: Explanation | None, show: bool) -> tuple[Any, Any]:
        """A new answer: the top class's heatmap, and the top classes to choose from."""
        labels = explained["labels"] if explained else []
        chooser = gr.Radio(choices=labels, value=labels[0] if labels else None)
        return heatmap_view(classifier, explained, None, show), chooser

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
        # The heatmap of each classification; with a model that has none, never shown.
        explained = gr.State(time_to_live=STATE_TTL_S)
        heatmap = gr.Image(
            label="Where the model looked",
            type="pil",
            interactive=False,
            elem_id="heatmap",
            render=False,
        )
        chooser = gr.Radio(label="Heatmap of", elem_id="heatmap-class", render=False)
        show = gr.Checkbox(value=True, label="Show the heatmap", elem_id="heatmap-on", render=False)
        outputs = [label, explained]
        with gr.Row(equal_height=False):
            with gr.Column():
                image = uploaded_image(
                    demo,
                    label="Photo",
                    sources=["upload", "webcam", "clipboard"],
                    webcam_options=REAR_CAMERA,
                )
                submit = gr.Button("Classify", variant="primary")
                # Wired before the examples, whose event would otherwise take "predict"
                # and leave this one the public "/predict_1". The state is no part of
                # the API: gradio_client gets the label alone.
                classified_one = submit.click(
                    classify, image, outputs, api_name="predict", concurrency_limit=CONCURRENCY
                )
                classified_one.success(None, js=SHOW_ANSWER_JS)
                # A refused file would stay in the box as a broken-image icon.
                classified_one.failure(None, None, image, js=CLEAR_JS)
                with gr.Accordion("Several photos at once", open=False, elem_id="several"):
                    several = gr.File(
                        label=f"Photos (up to {BATCH_FILES})",
                        file_count="multiple",
                        file_types=["image", *HEIF_TYPES],
                        type="filepath",
                        elem_id="several-photos",
                    )
                    submit_several = gr.Button("Classify all", elem_id="classify-all")
                    gallery = gr.Gallery(
                        label="Answers: pick one for its classes and heatmap",
                        columns=4,
                        height="auto",
                        allow_preview=False,
                        interactive=False,
                        elem_id="gallery",
                    )
                    results = gr.State(time_to_live=STATE_TTL_S)
                    # gradio_client: predict_many takes a list of files and gives the
                    # gallery (each photo captioned "top label NN%") and the first's label.
                    submit_several.click(
                        classify_many,
                        several,
                        [gallery, results, label, explained],
                        api_name="predict_many",
                        concurrency_limit=CONCURRENCY,
                    ).success(None, js=SHOW_ANSWER_JS)
                    gallery.select(
                        picked,
                        results,
                        [label, explained],
                        api_visibility="private",
                        concurrency_limit=CONCURRENCY,
                    )
                gr.Examples(
                    examples=[[str(path)] for path in examples],
                    inputs=image,
                    outputs=outputs,
                    fn=classify,
                    run_on_click=True,
                    cache_examples=False,
                    label="Or try an example",
                )
            with gr.Column():
                label.render()
                if feedback is not None:
                    # Imported here: the controls use this module's answer and errors.
                    from service.feedback_page import add_feedback

                    add_feedback(feedback, explained)
                if classifier.explains:
                    heatmap.render()
                    chooser.render()
                    show.render()
        if classifier.explains:
            private = {"api_visibility": "private", "concurrency_limit": CONCURRENCY}
            explained.change(explained_answer, [explained, show], [heatmap, chooser], **private)
            for control in (chooser, show):
                control.input(
                    lambda state, choice, on: heatmap_view(classifier, state, choice, on),
                    [explained, chooser, show],
                    heatmap,
                    **private,
                )
        gr.Markdown(provenance(metadata))
    demo.queue(max_size=QUEUE_SIZE, api_open=False)  # the queue, with its caps, is the way in
    internals.set_queue_polling(demo, QUEUE_POLL_S, PROGRESS_POLL_S)
    return demo


def page_error(error: Exception) -> gr.Error:
    """What the visitor sees of ``error``.

    Theirs to fix or to retry: its message, which stays until closed, and no
    traceback in the server log. A bug: logged with its traceback and the
    request id, which is all the visitor sees.
    """
    if isinstance(error, ClassifierError) and not error.server_fault:
        return gr.Error(str(error), duration=None, print_exception=False)
    log.error("Unexpected error on the page", exc_info=error)
    metrics.UNEXPECTED_ERRORS.inc()
    return gr.Error(request_id.internal_error_message(), duration=None, print_exception=False)


def mount(api: FastAPI, demo: gr.Blocks, settings: Settings) -> FastAPI:
    """The page at ``/`` of ``api``, behind ``PageGuard``; paths it does not know get the
    API's error shape.

    What ``launch()`` would switch on and the mount does not is switched on
    here: Gradio's check that a payload's file is an upload, and monitoring
    off. ``PageGuard`` wraps the page itself, between the API's router and
    Gradio: it sees exactly the requests the router hands the page, inside the
    API's middleware (its refusals carry the request id too). With
    ``settings.private``, ``AccessGate`` goes right inside ``RequestContext``,
    before anything reads a body or a file.
    """
    internals.check_uploads(demo)
    internals.clean_up_failed_uploads(UPLOAD_FILES)
    demo.state_session_capacity = PAGE_SESSIONS  # what launch(state_session_capacity=) sets
    internals.cap_queue_per_client(
        demo, settings.queue_per_client, client_of(settings.forwarded_hops)
    )
    if settings.users:  # a way out of a login, below the page
        from service.access.login import LOGOUT

        with demo:
            gr.Button("Log out", link=LOGOUT, size="sm", elem_id="logout")
    mounted = gr.mount_gradio_app(
        api,
        demo,
        path="/",
        max_file_size=MAX_FILE_SIZE,
        show_error=False,
        enable_monitoring=False,
        run_history=False,  # its routes are closed: no footer link to them
        app_kwargs={"exception_handlers": error_handlers(api, framework_prefix=GRADIO_API)},
    )
    page = next(route for route in api.routes if isinstance(route, Mount) and route.path == "")
    page.app = PageGuard(page.app, internals.holds(demo), internals.page_events(demo))
    if settings.private:  # imported only when on: a public app carries none of it
        from service.access.gate import AccessGate

        # Outermost after the request id: before anything reads a body or a file.
        inside = next(i for i, m in enumerate(api.user_middleware) if m.cls is RequestContext) + 1
        api.user_middleware.insert(inside, Middleware(AccessGate, settings=settings))
    return mounted
