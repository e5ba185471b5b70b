"""The MCP tool for AI assistants: ``classify_image`` at ``/mcp``, served when ``MCP=on``.

An assistant (Claude Desktop, VS Code, any MCP client) sends a photo as base64
text and gets its top classes back as structured content, with the model's
name, precision and sha256, and, if asked, where the model looked as a JPEG.
It is the MCP SDK's own server (not Gradio's, which would turn every page
event into a tool) over the same ``Classifier`` as ``POST /classify``: the
same memory budget, limits, format allow-list and messages. It reads no
file and fetches no URL: an image arrives as its bytes or not at all.

The SDK's streamable HTTP transport runs stateless, answering each POST with
plain JSON: no session lives in one process, so any instance behind a load
balancer without affinity (Heroku's ``web=2``) answers any request. Only
``app.py`` imports this module, and only when ``MCP=on``: with it off, the
SDK is never loaded (``docs/mcp.md``).
"""

import asyncio
import base64
import binascii
import json
import logging
import re
import unicodedata
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, ContentBlock, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from classifier.admission import BusyError
from classifier.errors import ClassifierError
from classifier.heatmap import jpeg
from classifier.model import Classifier
from classifier.options import TOP_K
from classifier.preprocess import FORMATS, ImageError, UnsupportedImageError
from service import metrics, request_id
from service.api import (
    ENVELOPE_BYTES,
    MAX_UPLOAD_BYTES,
    ModelOut,
    UploadTooLargeError,
)
from service.guard import is_url

log = logging.getLogger(__name__)

PATH = "/mcp"
MAX_IMAGE_CHARS = MAX_UPLOAD_BYTES
"""The longest ``image`` taken: 20 MB of base64, an image of up to 15 MB. The
request around it must fit the app's body limit (``BodyLimit``: 20 MB and
64 KB), so the string is bounded here, with a tool error, before that."""
ANY_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:")
"""Any scheme, host or not (``javascript:``, ``mailto:``): not base64, so named as a URL."""
DATA_URL = re.compile(
    r"data:(?:image/[a-z0-9.+-]+|application/octet-stream)?(?:;[a-z0-9.+-]+=[a-z0-9.+-]+)*;base64,",
    re.IGNORECASE,
)
"""The one URL taken: an image's own bytes, inline (RFC 2397)."""
WHITESPACE = re.compile(r"\s")
NO_URLS = (
    "classify_image fetches no URL and reads no file: send the image itself, its bytes "
    "as base64 (or a data:image/...;base64, URL)."
)
NOT_BASE64 = (
    "The image is not base64: send the file's bytes in standard base64 (A-Z, a-z, 0-9, "
    "+ and /, padded with =), or as a data:image/...;base64, URL."
)
NOT_IMAGE_DATA = "A data: URL must carry an image in base64: data:image/jpeg;base64,..."
LARGE_BODY = 1024 * 1024
"""Request bodies past this take turns (``Endpoint``)."""
TOO_LONG = (
    f"The image is over the limit of {MAX_IMAGE_CHARS // (1024 * 1024)} MB of base64 "
    f"({MAX_IMAGE_CHARS * 3 // 4 // (1024 * 1024)} MB as a file)."
)


class LabelOut(BaseModel):
    label: str = Field(examples=["tabby cat"])
    index: int = Field(examples=[281], description="The class's index in the model's output")
    probability: float = Field(examples=[0.83])


class ToolAnswer(BaseModel):
    """What ``classify_image`` answers, as structured content."""

    predictions: list[LabelOut] = Field(description="The likeliest classes first")
    model: ModelOut


def image_bytes(text: str) -> bytes:
    """An image sent as base64 (bare, or in a ``data:`` URL) -> its bytes.

    Only the base64 alphabet is taken, so no URL or path can pass as an image;
    one that is tried gets a message saying why.
    """
    if len(text) > MAX_IMAGE_CHARS:
        raise UploadTooLargeError(TOO_LONG)
    text = text.strip()
    prefix = DATA_URL.match(text)
    if prefix:
        text = text[prefix.end() :]
    elif text[:5].lower() == "data:":
        raise UnsupportedImageError(NOT_IMAGE_DATA)
    if WHITESPACE.search(text):
        text = WHITESPACE.sub("", text)  # MIME's line breaks
    try:
        data = binascii.a2b_base64(
            text + "=" * (-len(text) % 4) if len(text) % 4 else text, strict_mode=True
        )
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise ImageError(NO_URLS if names_a_place(text) else NOT_BASE64) from None
    return data


def refusal(message: str) -> CallToolResult:
    """A tool error: its message for the assistant to read and act on."""
    return CallToolResult(content=[TextContent(text=message)], is_error=True)


def names_a_place(text: str) -> bool:
    """Whether ``text`` reads as a URL or a path, in any spelling: a scheme (``http:``,
    ``HTTPS:``, ``file:``, ``C:``), ``//host``, ``\\\\share``, ``~``, percent-encoded or in
    full-width letters."""
    if is_url(text[:2048]):
        return True
    head = unicodedata.normalize("NFKC", urllib.parse.unquote(text[:2048])).strip().lower()
    return bool(ANY_SCHEME.match(head)) or head.startswith(("/", "\\", "~", "www."))


def description(classifier: Classifier) -> str:
    """The tool's description: what the model is, from its metadata, and what it takes."""
    metadata = classifier.metadata
    weights = {"imagenet": "ImageNet weights", "random": "RANDOM TEST WEIGHTS"}
    trained = weights.get(metadata.weights_source, "its own trained weights")
    warning = (
        " These are random test weights: its answers are meaningless, for trying the tool only."
        if metadata.weights_source == "random"
        else ""
    )
    heatmap = (
        " With heatmap=true it also returns, as a JPEG, the photo with where the model saw "
        "the top class laid over it."
        if classifier.explains
        else ""
    )
    return (
        f"Classify a photo with {metadata.name} ({trained}, {metadata.precision}, "
        f"{metadata.classes} classes): the k likeliest classes, each with its label, "
        f"index and probability, and the model's name, precision and sha256.{heatmap}"
        f"{warning} Input: the image file's bytes as base64 (or a data:image/...;base64, "
        f"URL), {FORMATS}, at most {MAX_IMAGE_CHARS * 3 // 4 // (1024 * 1024)} MB. The tool "
        "fetches no URL and reads no file."
    )


def build_server(classifier: Classifier) -> MCPServer:
    """An MCP server with one tool, ``classify_image``, over ``classifier``."""
    metadata = classifier.metadata
    model = ModelOut(name=metadata.name, precision=metadata.precision, sha256=metadata.sha256)
    server = MCPServer(
        f"{metadata.name} image classifier",
        instructions="One tool, classify_image: send a photo as base64, get its classes.",
        log_level="WARNING",
    )

    def classified(text: str, k: int, heatmap: bool) -> CallToolResult:
        """One image -> its answer, as ``POST /classify`` gives it."""
        classifier.check_explain(heatmap)
        upload = image_bytes(text)
        overlay: list[ContentBlock] = []
        try:
            if heatmap:
                explained = classifier.classify_photo(upload, k, explain=True)
                predictions = explained.predictions
                drawn = classifier.overlay(explained.photo, predictions[0].heatmap)
                data = base64.b64encode(jpeg(drawn)).decode("ascii")
                overlay.append(ImageContent(data=data, mime_type="image/jpeg"))
            else:
                predictions = classifier.classify(upload, k)
        except UnsupportedImageError as error:
            # A path such as /proc/self/environ is base64 too: say why it is no image.
            if names_a_place(text):
                raise UnsupportedImageError(NO_URLS) from error
            raise
        labels = [
            LabelOut(label=p.label, index=p.index, probability=p.probability) for p in predictions
        ]
        structured = ToolAnswer(predictions=labels, model=model).model_dump(mode="json")
        content: list[ContentBlock] = [TextContent(text=json.dumps(structured)), *overlay]
        return CallToolResult(content=content, structured_content=structured)

    def answer(text: str, k: int, heatmap: bool) -> CallToolResult:
        """The answer or the refusal, in a worker thread, counted in the metrics.

        A refusal is a result (``is_error``), not an exception: none leaves
        this thread, so no traceback keeps the request's 20 MB alive in its
        frames until the garbage collector's next full pass.
        """
        try:
            with metrics.observed("mcp"):
                return classified(text, k, heatmap)
        except ClassifierError as error:
            if not error.server_fault:
                return refusal(str(error))
            unexpected: Exception = error
        except Exception as error:
            unexpected = error
        log.error("Unexpected error in classify_image", exc_info=unexpected)
        metrics.UNEXPECTED_ERRORS.inc()
        return refusal(request_id.internal_error_message())

    @server.tool(
        title=f"Classify an image with {metadata.name}",
        description=description(classifier),
        annotations=ToolAnnotations(
            read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def classify_image(
        image: Annotated[
            str,
            Field(
                description="The image file's bytes in base64, or a data:image/...;base64, URL "
                "(never a link: the tool fetches nothing)"
            ),
        ],
        k: Annotated[
            int, Field(ge=1, le=metadata.classes, description="How many classes to return")
        ] = min(TOP_K, metadata.classes),
        heatmap: Annotated[
            bool, Field(description="Also return where the model looked, as a JPEG")
        ] = False,
    ) -> Annotated[CallToolResult, ToolAnswer]:
        return await run_in_threadpool(answer, image, k, heatmap)

    return server


class Endpoint:
    """``/mcp``: the SDK's transport, one large request at a time.

    The transport holds a request's whole body, and its JSON parse and the
    image's decoded bytes beside it, before the tool's decode draws on the
    memory budget: about 5 times the body, ~95 MB for 20 MB of base64. So
    requests over ``LARGE_BODY`` (or of undeclared length) take turns, each
    waiting at most ``wait_s`` (``ADMISSION_TIMEOUT``) before a 503; smaller
    ones (listing the tool, photos under 0.75 MB) go straight in.
    """

    def __init__(self, manager: StreamableHTTPSessionManager, wait_s: float) -> None:
        self.manager = manager
        self.wait_s = wait_s
        self.large = asyncio.Semaphore(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) <= LARGE_BODY:
            await self.manager.handle_request(scope, receive, send)
            return
        try:
            await asyncio.wait_for(self.large.acquire(), self.wait_s)
        except TimeoutError:
            raise BusyError(
                "The server is busy with other large images; please try again in a few seconds.",
                retry_after=max(1, round(self.wait_s / 4)),
            ) from None
        try:
            await self.manager.handle_request(scope, receive, send)
        finally:
            self.large.release()


def mount_agents(api: FastAPI, classifier: Classifier, wait_s: float) -> None:
    """Serve the tool at ``/mcp`` of ``api``, before the page is mounted at ``/``.

    The transport's session manager runs for the app's lifespan (the page's
    mount keeps this lifespan inside its own). Its checks of ``Host`` and
    ``Origin`` (DNS rebinding, a threat to servers on a developer's machine)
    are off: the app is served under any host name, a browser cannot post
    JSON to it from another origin (no CORS), and a page that rebinds a name
    to a local app reaches nothing ``POST /classify`` does not already offer
    (the tool reads no file, fetches nothing). Its body limit is the
    app's, which ``BodyLimit`` enforces first. ``wait_s``: how long a large
    request may wait for its turn (``Endpoint``).
    """
    server = build_server(classifier)
    server.streamable_http_app(
        streamable_http_path=PATH,
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        max_request_body_size=MAX_UPLOAD_BYTES + ENVELOPE_BYTES,
    )
    manager = server.session_manager
    outer = api.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with outer(app) as state, manager.run():
            yield state

    api.router.lifespan_context = lifespan
    api.router.routes.append(Route(PATH, Endpoint(manager, wait_s), methods=["POST"]))
