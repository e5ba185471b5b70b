"""The HTTP API beside the page: ``POST /classify``, its batch, health checks and metrics.

One request classifies one image (or, at ``/classify/batch``, up to
``BATCH_FILES`` at once, each answered on its own), so any number of instances can serve it
behind a load balancer with no session affinity (the Gradio page needs
affinity: its upload, call and result are three requests to one process).
Every answer that is not a success is ``{"error": "<a message for people>"}``
with a status that says whose fault it is (``ClassifierError.status``), the
framework's own (404, 405, validation) included; bad input never gets a 500.
"""

import asyncio
import base64
import hmac
import http
import logging
import tempfile
from collections.abc import Awaitable, Callable
from typing import Annotated, BinaryIO

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from classifier.errors import ClassifierError
from classifier.heatmap import png
from classifier.model import Classifier, Prediction
from classifier.options import TOP_K
from classifier.preprocess import ImageError, ImageTooLargeError, UnsupportedImageError
from service import metrics, request_id
from service.guard import SecurityHeaders
from service.request_id import RequestContext

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""The largest upload taken, as on the page (``20mb``)."""
ENVELOPE_BYTES = 64 * 1024
"""Room for a multipart form's boundaries and part headers around the file."""
SPOOL_BYTES = 1024 * 1024
"""Uploads up to this size stay in memory; larger ones are spooled to disk."""
BATCH_FILES = 16
"""The most files ``POST /classify/batch`` takes, all within ``MAX_UPLOAD_BYTES`` together."""


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


class FileResultOut(BaseModel):
    file: str = Field(examples=["cat.jpg"], description="The file's name, as the form sent it")
    predictions: list[PredictionOut] | None = Field(None, description="As `/classify` gives them")
    overlay: str | None = Field(None, description="With `explain=true`, as on `/classify`")
    error: str | None = Field(
        None,
        examples=["The file is not an image that can be read."],
        description="Instead of `predictions`: why this file could not be classified",
    )


class BatchOut(BaseModel):
    results: list[FileResultOut] = Field(description="One per file, in the order sent")
    model: ModelOut


class ErrorOut(BaseModel):
    error: str = Field(examples=["The file is not an image that can be read."])


class UploadTooLargeError(ImageTooLargeError):
    """The request body is over ``MAX_UPLOAD_BYTES``."""


class MissingUploadError(ImageError):
    """No image in the request."""


class MalformedUploadError(ImageError):
    """A multipart body that cannot be parsed, or with more than the one file."""


HTTP_MESSAGES = {
    404: "There is nothing here: the page is at /, the API is POST /classify (see /docs).",
    405: "This path does not take {method}: use {allowed}.",
}

BATCH_DOC = {
    "requestBody": {
        "required": True,
        "description": f"Up to {BATCH_FILES} images, each a multipart form field `files` "
        "(`curl -F files=@a.jpg -F files=@b.heic`), 20 MB in all.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "maxItems": BATCH_FILES,
                        }
                    },
                    "required": ["files"],
                }
            }
        },
    }
}
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


class BodyLimit:
    """ASGI middleware: no request body is read past ``limit`` bytes, whichever route reads it.

    The body is counted as it streams in, chunked or not: the message that
    would pass the limit raises ``UploadTooLargeError`` (413) in the reader,
    so no more than the limit is ever parsed, held or written to disk, by
    the API or by the page's own upload route.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_UPLOAD_BYTES + ENVELOPE_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "0")
        if declared.isdigit() and int(declared) > self.limit:
            await error_response(413, _too_large_message())(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise UploadTooLargeError(_too_large_message())
            return message

        await self.app(scope, limited, send)


async def read_upload(request: Request) -> BinaryIO:
    """The uploaded image as a file object (spooled to disk past 1 MB), never over 20 MB."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return await read_form_file(request)
    if content_type.startswith(("image/", "application/octet-stream")):
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (the caller closes it)
        try:
            async for chunk in request.stream():
                spool.write(chunk)
                if spool.tell() > MAX_UPLOAD_BYTES:
                    raise UploadTooLargeError(_too_large_message())
        except BaseException:
            spool.close()
            raise
        if spool.tell() == 0:
            spool.close()
            raise MissingUploadError("The request body is empty: send an image.")
        spool.seek(0)
        return spool
    raise UnsupportedImageError(
        f"Send an image as the multipart form field `file` or as a raw body with an image "
        f"Content-Type, not {content_type[:100] or 'no Content-Type'}."
    )


async def read_form_file(request: Request) -> BinaryIO:
    """The form's one file, from the field ``file``."""
    form = await parse_form(request, 1, "send one image, as the multipart form field `file`")
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        await form.close()
        raise MissingUploadError("Send the image as the multipart form field `file`.")
    if (upload.size or 0) > MAX_UPLOAD_BYTES:
        await form.close()
        raise UploadTooLargeError(_too_large_message())
    return upload.file


async def parse_form(request: Request, max_files: int, hint: str) -> FormData:
    """The multipart form, of at most ``max_files`` files; ``hint`` says what to send instead."""
    parser = MultiPartParser(request.headers, request.stream(), max_files=max_files, max_fields=1)
    try:
        return await parser.parse()
    except MultiPartException as error:
        log.info("Unreadable multipart form: %s", error)
        raise MalformedUploadError(f"The form could not be read: {hint}.") from error


async def read_form_files(request: Request) -> tuple[FormData, list[UploadFile]]:
    """The form and its files, from the fields ``files``, in the order sent."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedImageError(
            "Send the images as a multipart form, each in a field `files` (curl -F files=@a.jpg)."
        )
    hint = f"send up to {BATCH_FILES} images, each as a multipart form field `files`"
    form = await parse_form(request, BATCH_FILES, hint)
    uploads = [upload for upload in form.getlist("files") if isinstance(upload, UploadFile)]
    if not uploads:
        await form.close()
        raise MissingUploadError(f"No images: {hint}.")
    return form, uploads


def _too_large_message() -> str:
    return f"The file is over the limit of {MAX_UPLOAD_BYTES // (1024 * 1024)} MB."


Handler = Callable[[Request, Exception], Awaitable[Response]]


def error_handlers(api: FastAPI, framework_prefix: str | None = None) -> dict[type, Handler]:
    """The one way errors are answered, for ``api`` and for apps mounted on it.

    ``framework_prefix``: paths whose errors keep the framework's own shape,
    because a client library reads it (Gradio's ``/gradio_api/``).
    """

    async def classifier_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, ClassifierError)
        if error.server_fault:
            raise error  # answered as any bug is, by RequestContext
        return error_response(error.status, str(error), error.headers)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if framework_prefix and request.url.path.startswith(framework_prefix):
            return await http_exception_handler(request, error)
        status, headers = error.status_code, dict(error.headers or {})
        allowed = methods_of(api, request) if status in (404, 405) else None
        if allowed:  # a route of the API's, behind the page mounted at /
            status, headers = 405, {**headers, "Allow": ", ".join(sorted(allowed))}
        message = HTTP_MESSAGES.get(status, f"{http.HTTPStatus(status).phrase}.")
        allowed_text = headers.get("Allow", "").replace(", ", " or ")
        return error_response(
            status, message.format(method=request.method, allowed=allowed_text), headers
        )

    async def invalid_request(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        if framework_prefix and request.url.path.startswith(framework_prefix):
            return await request_validation_exception_handler(request, error)
        problems = "; ".join(
            f"{problem['loc'][-1]}: {problem['msg']}" for problem in error.errors()
        )
        return error_response(422, problems)

    return {
        ClassifierError: classifier_error,
        HTTPException: http_error,
        RequestValidationError: invalid_request,
    }


def methods_of(api: FastAPI, request: Request) -> set[str]:
    """The methods ``api``'s route at this path takes, if it has one there."""
    for route in api.routes:
        match, _ = route.matches({**request.scope, "root_path": ""})
        if match is Match.PARTIAL:
            return set(getattr(route, "methods", ()))
    return set()


def classification_out(
    predictions: list[Prediction], model: ModelOut, overlay: str | None = None
) -> ClassificationOut:
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


def build_api(classifier: Classifier, metrics_token: str | None = None) -> FastAPI:
    """The REST routes over ``classifier``; mount the page on it afterwards.

    ``metrics_token``: if set, ``/metrics`` answers only that bearer token.
    """
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
    for kind, handler in error_handlers(api).items():
        api.add_exception_handler(kind, handler)
    api.add_middleware(BodyLimit)
    api.add_middleware(SecurityHeaders)
    api.add_middleware(RequestContext)  # outermost: its id is on the others' log lines

    def answer(upload: BinaryIO, k: int, explain: bool) -> ClassificationOut:
        """One upload -> the answer ``/classify`` gives (run in a worker thread)."""
        if not explain:
            return classification_out(classifier.classify(upload, k), model)
        classified = classifier.classify_photo(upload, k, explain=True)
        image = classifier.overlay(classified.photo, classified.predictions[0].heatmap)
        overlay = base64.b64encode(png(image)).decode("ascii")
        return classification_out(classified.predictions, model, overlay)

    async def file_result(upload: UploadFile, k: int, explain: bool) -> FileResultOut:
        """One file of a batch: its answer, or its error, which fails it alone."""
        name = upload.filename or ""
        try:
            with metrics.observed("batch"):
                if (upload.size or 0) > MAX_UPLOAD_BYTES:
                    raise UploadTooLargeError(_too_large_message())
                answered = await run_in_threadpool(answer, upload.file, k, explain)
        except ClassifierError as error:
            if error.server_fault:
                log.error("Unexpected error on %r of a batch", name, exc_info=error)
                return FileResultOut(file=name, error=request_id.internal_error_message())
            return FileResultOut(file=name, error=str(error))
        return FileResultOut(file=name, predictions=answered.predictions, overlay=answered.overlay)

    k_query = Annotated[int, Query(ge=1, le=classes, description="How many classes")]
    explain_query = Annotated[
        bool, Query(description="Add each class's heatmap and the top one over the photo")
    ]
    failures = {
        code: {"model": ErrorOut, "description": description}
        for code, description in (
            (400, "An unreadable, truncated or corrupt image"),
            (413, "A file or image over the limits"),
            (415, "Not an image type the app reads"),
            (422, "A bad `k`, or `explain` for a model without a heatmap"),
            (500, "A bug: the answer names the request's id, which its log lines carry"),
            (503, "Saturated or shutting down: retry after `Retry-After` seconds"),
        )
    }

    @api.post(
        "/classify",
        response_model=ClassificationOut,
        summary="Classify one image",
        responses=failures,
        openapi_extra=UPLOAD_DOC,
        response_model_exclude_none=True,
    )
    async def classify(
        request: Request, k: k_query = TOP_K, explain: explain_query = False
    ) -> ClassificationOut | Response:
        classifier.check_explain(explain)
        with metrics.observed("classify"):
            upload = await read_upload(request)
            try:
                return await run_in_threadpool(answer, upload, k, explain)
            finally:
                upload.close()

    @api.post(
        "/classify/batch",
        response_model=BatchOut,
        summary=f"Classify up to {BATCH_FILES} images at once",
        description="Each file is answered on its own, in the order sent: its predictions as "
        "`/classify` gives them, or its `error`. The request fails only when the form does "
        f"(not multipart, no field `files`, more than {BATCH_FILES} files, over 20 MB in all).",
        responses=failures,
        openapi_extra=BATCH_DOC,
        response_model_exclude_none=True,
    )
    async def classify_batch(
        request: Request, k: k_query = TOP_K, explain: explain_query = False
    ) -> BatchOut:
        classifier.check_explain(explain)
        form, uploads = await read_form_files(request)
        try:
            results = await asyncio.gather(*(file_result(upload, k, explain) for upload in uploads))
        finally:
            await form.close()
        return BatchOut(results=list(results), model=model)

    @api.get("/healthz", summary="The process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", summary="The model is loaded and warmed up", responses={503: {}})
    async def readyz() -> Response:
        if not classifier.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ready", "model": model.model_dump()})

    expected = f"Bearer {metrics_token}".encode() if metrics_token else None

    @api.get("/metrics", summary="Prometheus metrics", response_class=Response, responses={401: {}})
    async def prometheus_metrics(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        # In a private app the access gate has already let the caller in for metrics.
        if expected and not hmac.compare_digest(given, expected) and not metrics.CALLER.get():
            return error_response(
                401, "The metrics take a bearer token.", {"WWW-Authenticate": "Bearer"}
            )
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return api
