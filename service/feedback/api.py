"""``POST /feedback``: a correction over REST, with the upload limits and error shape of
``/classify``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from service import metrics
from service.api import (
    MAX_UPLOAD_BYTES,
    ErrorOut,
    MalformedUploadError,
    MissingUploadError,
    UploadTooLargeError,
    _too_large_message,
    parse_form,
)
from service.feedback import MAX_LABEL_CHARS, Feedback, LabelRefusedError
from service.guard import client_of

FIELDS = ("label", "predicted", "request_id")


class FeedbackOut(BaseModel):
    id: int = Field(examples=[42], description="The stored correction's id")


FEEDBACK_DOC = {
    "requestBody": {
        "required": True,
        "description": "A multipart form: the image as `file`, the right label as `label` "
        "(`curl -F file=@dog.jpg -F label='golden retriever' -F predicted='tabby cat'`).",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "label": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_LABEL_CHARS,
                            "description": "What the photo is: one of the model's labels, "
                            "or a class of your own words",
                        },
                        "predicted": {
                            "type": "string",
                            "maxLength": MAX_LABEL_CHARS,
                            "description": "The answer this corrects (the top label)",
                        },
                        "request_id": {
                            "type": "string",
                            "description": "The `X-Request-ID` of that classification",
                        },
                    },
                    "required": ["file", "label"],
                }
            }
        },
    }
}

FAILURES = {
    code: {"model": ErrorOut, "description": description}
    for code, description in (
        (400, "An unreadable, truncated or corrupt image, or a form that cannot be read"),
        (413, "A file or image over the limits"),
        (415, "Not an image type the app reads"),
        (422, "A label that is empty, over 100 characters or has control characters"),
        (429, "This client sent its corrections for the hour: retry after `Retry-After` s"),
        (500, "A bug: the answer names the request's id, which its log lines carry"),
        (503, "The store cannot be reached, or the server is saturated: `Retry-After`"),
        (507, "The store is full"),
    )
}


def feedback_router(feedback: Feedback) -> APIRouter:
    """``POST /feedback`` over ``feedback``; clients told apart as the page's queue does."""
    router = APIRouter()
    client = client_of(feedback.forwarded_hops)

    @router.post(
        "/feedback",
        status_code=201,
        response_model=FeedbackOut,
        summary="Say what an image really is",
        description="Stores the photo (re-encoded as a JPEG of at most 640 px a side), the "
        "label, the model's answer and a salted hash of the client, for training "
        "(`python -m service.feedback export`). Limited per client and in total.",
        responses=FAILURES,
        openapi_extra=FEEDBACK_DOC,
    )
    async def send_feedback(request: Request) -> JSONResponse:
        with metrics.observed("feedback"):
            form = await parse_form(
                request, 1, "send the image as `file` and its label as `label`", len(FIELDS)
            )
            try:
                unknown = sorted(set(form.keys()) - {"file", *FIELDS})
                if unknown:
                    raise MalformedUploadError(
                        f"The form has a field {unknown[0][:40]!r} it does not take: send "
                        "`file`, `label` and, if you like, `predicted` and `request_id`."
                    )
                upload = form.get("file")
                if not isinstance(upload, UploadFile):
                    raise MissingUploadError("Send the image as the multipart form field `file`.")
                if (upload.size or 0) > MAX_UPLOAD_BYTES:
                    raise UploadTooLargeError(_too_large_message())
                label, predicted, request_id = (text_field(form.get(name), name) for name in FIELDS)
                if label is None:
                    raise LabelRefusedError("label: say what the photo is, as the field `label`.")
                identifier = await run_in_threadpool(
                    feedback.send,
                    upload.file,
                    label,
                    client(request),
                    predicted=predicted,
                    request_id=request_id,
                )
            finally:
                await form.close()
        return JSONResponse({"id": identifier}, status_code=201)

    return router


def text_field(value: object, name: str) -> str | None:
    """A form field that must be text, not a file."""
    if value is None or isinstance(value, str):
        return value
    raise LabelRefusedError(f"{name}: send it as text, not as a file.")
