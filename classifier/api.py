"""The HTTP API beside the page: ``POST /classify``, health checks and metrics.

One request classifies one image, so any number of instances can serve it
behind a load balancer with no session affinity (the Gradio page needs
affinity: its upload, call and result are three requests to one process).
Errors answer ``{"error": "..."}`` with a status that says whose fault it
is; bad input never gets a 500.
"""

import base64
import logging
import tempfile
from typing import Annotated, BinaryIO

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from classifier import metrics
from classifier.admission import BusyError
from classifier.heatmap import png
from classifier.model import Classifier, Prediction
from classifier.preprocess import ImageError, ImageTooLargeError, UnsupportedImageError

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""The largest upload taken, as on the page (``20mb``)."""
SPOOL_BYTES = 1024 * 1024
"""Uploads up to this size stay in memory; larger ones are spooled to disk."""
DEFAULT_K = 5


class PredictionOut(BaseModel):
    label: str = Field(examples=["tabby cat"])
    index: int = Field(examples=[281])
    probability: float = Field(examples=[0.83])
    heatmap: list[list[float]] | None = Field(
        None,
        description="With `explain=true`: where the model saw this class, 0..1, at the last "
        "feature map's resolution (8 x 8 for InceptionV3), rows top to bottom",
    )


class ModelOut(BaseModel):
    name: str = Field(examples=["InceptionV3"])
    precision: str = Field(examples=["float32"])
    sha256: str


class ClassificationOut(BaseModel):
    predictions: list[PredictionOut]
    model: ModelOut
    overlay: str | None = Field(
        None,
        description="With `explain=true`: the top class's heatmap over the photo (upright, at "
        "most 1024 pixels a side), a PNG in base64",
    )


class ErrorOut(BaseModel):
    error: str = Field(examples=["The file is not an image that can be read."])


class UploadTooLargeError(ImageTooLargeError):
    """The request body is over ``MAX_UPLOAD_BYTES``."""


class MissingUploadError(ImageError):
    """No image in the request."""


STATUS = (
    (BusyError, 503),
    (ImageTooLargeError, 413),
    (UnsupportedImageError, 415),
    (ImageError, 400),
)

UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "description": "The image: a multipart form field `file`, or the raw bytes with an "
        "image Content-Type (`curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg'`).",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_upload(request: Request) -> BinaryIO:
    """The uploaded image as a file object (spooled to disk past 1 MB), never over 20 MB."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > MAX_UPLOAD_BYTES + SPOOL_BYTES:  # room for the multipart envelope
        raise UploadTooLargeError(_too_large_message())
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=2)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise MissingUploadError("Send the image as the multipart form field `file`.")
        if (upload.size or 0) > MAX_UPLOAD_BYTES:
            raise UploadTooLargeError(_too_large_message())
        return upload.file
    if content_type.startswith(("image/", "application/octet-stream")):
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (the caller closes it)
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                spool.close()
                raise UploadTooLargeError(_too_large_message())
            spool.write(chunk)
        if size == 0:
            raise MissingUploadError("The request body is empty: send an image.")
        spool.seek(0)
        return spool
    raise UnsupportedImageError(
        f"Send an image as multipart form field `file` or as a raw body with an image "
        f"Content-Type, not {content_type or 'no Content-Type'}."
    )


def _too_large_message() -> str:
    return f"The file is over the limit of {MAX_UPLOAD_BYTES // (1024 * 1024)} MB."


def build_api(classifier: Classifier) -> FastAPI:
    """The REST routes over ``classifier``; mount the page on it afterwards."""
    metadata = classifier.metadata
    classes = metadata.classes
    model = ModelOut(name=metadata.name, precision=metadata.precision, sha256=metadata.sha256)
    metrics.MODEL_INFO.labels(model.name, model.precision, model.sha256).set(1)
    metrics.BUDGET_CAPACITY.set(classifier.budget.capacity)
    metrics.BUDGET_IN_USE.set_function(lambda: classifier.budget.in_use)
    metrics.WAITING.set_function(lambda: classifier.budget.waiting)

    api = FastAPI(
        title=f"{metadata.name} image classifier",
        description="Classify an image with one request. The page is at `/`.",
        docs_url="/docs",
        redoc_url=None,
    )

    def top_overlay(upload: BinaryIO, predictions: list[Prediction]) -> str:
        """The top class's heatmap over the photo, a PNG in base64."""
        image = classifier.overlay(upload, predictions[0].heatmap)
        return base64.b64encode(png(image)).decode("ascii")

    @api.exception_handler(ImageError)
    @api.exception_handler(BusyError)
    async def classification_error(request: Request, error: Exception) -> Response:
        status = next(code for kind, code in STATUS if isinstance(error, kind))
        headers = {"Retry-After": str(error.retry_after)} if isinstance(error, BusyError) else None
        return error_response(status, str(error), headers)

    @api.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{problem['loc'][-1]}: {problem['msg']}" for problem in error.errors()
        )
        return error_response(422, problems)

    @api.post(
        "/classify",
        response_model=ClassificationOut,
        summary="Classify one image",
        responses={
            code: {"model": ErrorOut, "description": description}
            for code, description in (
                (400, "An unreadable, truncated or corrupt image"),
                (413, "A file or image over the limits"),
                (415, "Not an image type the app reads"),
                (422, "A bad `k`, or `explain` for a model without a heatmap"),
                (503, "Saturated or shutting down: retry after `Retry-After` seconds"),
            )
        },
        openapi_extra=UPLOAD_DOC,
        response_model_exclude_none=True,
    )
    async def classify(
        request: Request,
        k: Annotated[int, Query(ge=1, le=classes, description="How many classes")] = DEFAULT_K,
        explain: Annotated[
            bool, Query(description="Add each class's heatmap and the top one over the photo")
        ] = False,
    ) -> ClassificationOut | Response:
        if explain and not classifier.explains:
            return error_response(
                422,
                f"explain: {metadata.name} gives no heatmap (its head is not global "
                "average pooling and a dense layer); leave explain out.",
            )
        with metrics.observed("classify"):
            upload = await read_upload(request)
            try:
                predictions = await run_in_threadpool(classifier.classify, upload, k, explain)
                overlay = (
                    await run_in_threadpool(top_overlay, upload, predictions) if explain else None
                )
            finally:
                upload.close()
        return ClassificationOut(
            predictions=[
                PredictionOut(
                    label=p.label,
                    index=p.index,
                    probability=p.probability,
                    heatmap=None if p.heatmap is None else p.heatmap.tolist(),
                )
                for p in predictions
            ],
            model=model,
            overlay=overlay,
        )

    @api.get("/healthz", summary="The process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", summary="The model is loaded and warmed up", responses={503: {}})
    async def readyz() -> Response:
        if not classifier.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ready", "model": model.model_dump()})

    @api.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return api
