"""The MCP tool, ``classify_image``, through the SDK's own streamable-HTTP client, against
the app as the Procfile starts it with ``MCP=on``: one tool, the answers of ``POST /classify``
for the same photos, its heatmap, its refusals (each a tool error with the REST API's
message), no URL ever fetched, bounded bodies; and, with ``MCP`` off, no endpoint and no SDK
in the process.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult
from PIL import Image

from classifier.assets import ROOT
from tests.support.harness import Instance, classify, metric, serving
from tests.support.images import INVALID
from tests.support.photos import CAT_PHOTO, COFFEE_PHOTO, imagenet_sample_photos

T = TypeVar("T")
HELD_OUT_PHOTOS = 5
MAX_IMAGE_CHARS = 20 * 1024 * 1024
"""The longest ``image`` string the tool takes: 20 MB of base64."""
BODY_LIMIT = 20 * 1024 * 1024 + 64 * 1024
"""The app's request body limit (``service.api.BodyLimit``), every route's."""
NO_URLS = "fetches no URL and reads no file"
MB = 1024 * 1024
SDK_MODULES = ("mcp", "mcp_types", "sse_starlette")


@pytest.fixture(scope="module")
def app(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    log = tmp_path_factory.mktemp("mcp") / "app.log"
    with serving(model_path, log, MCP="on") as instance:
        yield instance


@pytest.fixture(scope="module")
def http(app: Instance) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app.url, timeout=120) as client:
        yield client


def with_client(
    app: Instance,
    work: Callable[[Client], Awaitable[T]],
    key: str | None = None,
    mode: str = "auto",
) -> T:
    """``work`` done with an MCP client connected to ``app``'s ``/mcp``, sending ``key``,
    speaking the protocol ``mode`` says (``auto``: the newest both sides know)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def run() -> T:
        async with (
            httpx2.AsyncClient(headers=headers, timeout=120) as http,
            Client(streamable_http_client(f"{app.url}mcp", http_client=http), mode=mode) as client,
        ):
            return await work(client)

    return asyncio.run(run())


def call(app: Instance, **arguments: Any) -> CallToolResult:
    return with_client(app, lambda client: client.call_tool("classify_image", arguments))


def encoded(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def error_text(result: CallToolResult) -> str:
    assert result.is_error, result.structured_content
    (content,) = result.content
    assert content.type == "text"
    assert "Traceback" not in content.text
    return content.text


# --- the tool, as a client lists it --------------------------------------------------------


def test_the_one_tool_is_classify_image_with_its_input_schema(app: Instance) -> None:
    tools = with_client(app, lambda client: client.list_tools()).tools
    assert [tool.name for tool in tools] == ["classify_image"]
    (tool,) = tools
    schema = tool.input_schema
    assert set(schema["properties"]) == {"image", "k", "heatmap"}
    assert schema["required"] == ["image"]
    assert schema["properties"]["image"]["type"] == "string"
    assert schema["properties"]["k"] | {"description": ""} == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
        "default": 5,
        "title": "K",
        "description": "",
    }
    assert schema["properties"]["heatmap"]["default"] is False
    assert set(tool.output_schema["properties"]) == {"predictions", "model"}
    assert tool.annotations.read_only_hint is True
    # What the model is, from its metadata, and what the tool takes and never does.
    for promise in ("InceptionV3", "1000 classes", "random test weights", "base64", NO_URLS):
        assert promise in tool.description


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_clients_of_either_protocol_era_list_and_call_it(app: Instance, mode: str) -> None:
    """``legacy``: the initialize handshake (2025-11-25), as Claude Desktop and VS Code
    speak it; ``2026-07-28``: no handshake."""

    async def list_and_call(client: Client) -> tuple[str, list[str], CallToolResult]:
        tools = await client.list_tools()
        result = await client.call_tool("classify_image", {"image": encoded(CAT_PHOTO), "k": 2})
        return client.protocol_version, [tool.name for tool in tools.tools], result

    version, names, result = with_client(app, list_and_call, mode=mode)
    assert (version, names) == ("2025-11-25" if mode == "legacy" else mode, ["classify_image"])
    assert len(result.structured_content["predictions"]) == 2


# --- answers: the same as POST /classify ---------------------------------------------------


def assert_same_answers(app: Instance, http: httpx.Client, photos: list[Path]) -> None:
    for photo in photos:
        rest = classify(http, photo).json()
        result = call(app, image=encoded(photo))
        assert not result.is_error, result.content
        answer = result.structured_content
        assert answer["model"] == rest["model"]
        assert [p["index"] for p in answer["predictions"]] == [
            p["index"] for p in rest["predictions"]
        ], photo.name
        for ours, theirs in zip(answer["predictions"], rest["predictions"], strict=True):
            assert ours["label"] == theirs["label"]
            assert ours["probability"] == pytest.approx(theirs["probability"], rel=1e-6)


def test_five_held_out_photos_get_the_top_classes_of_post_classify(
    app: Instance, http: httpx.Client
) -> None:
    photos = imagenet_sample_photos()[1::2][:HELD_OUT_PHOTOS]  # skips where they are absent
    assert len(photos) == HELD_OUT_PHOTOS
    assert_same_answers(app, http, photos)


def test_the_example_photos_get_the_answers_of_post_classify(
    app: Instance, http: httpx.Client
) -> None:
    assert_same_answers(app, http, [CAT_PHOTO, COFFEE_PHOTO])


@pytest.mark.parametrize(
    "prefix",
    [
        "data:image/png;base64,",
        "DATA:image/PNG;BASE64,",
        "data:;base64,",
        "  data:image/png;base64,",
    ],
)
def test_a_data_url_or_base64_with_line_breaks_is_the_same_image(
    app: Instance, prefix: str
) -> None:
    bare = call(app, image=encoded(CAT_PHOTO), k=3).structured_content
    wrapped = base64.encodebytes(CAT_PHOTO.read_bytes()).decode("ascii")  # 76-column lines
    assert call(app, image=prefix + encoded(CAT_PHOTO), k=3).structured_content == bare
    assert call(app, image=wrapped, k=3).structured_content == bare


def test_k_sets_how_many_classes(app: Instance) -> None:
    answer = call(app, image=encoded(CAT_PHOTO), k=12).structured_content
    probabilities = [p["probability"] for p in answer["predictions"]]
    assert len(probabilities) == 12
    assert probabilities == sorted(probabilities, reverse=True)


@pytest.mark.parametrize("k", [0, -1, 1001])
def test_a_k_outside_the_model_s_classes_is_a_tool_error(app: Instance, k: int) -> None:
    assert "k" in error_text(call(app, image=encoded(CAT_PHOTO), k=k))


def test_a_heatmap_comes_as_the_top_class_s_overlay_in_jpeg(app: Instance) -> None:
    plain = call(app, image=encoded(COFFEE_PHOTO))
    result = call(app, image=encoded(COFFEE_PHOTO), heatmap=True)
    assert not result.is_error, result.content
    assert result.structured_content == plain.structured_content
    text, image = result.content
    assert (text.type, image.type) == ("text", "image")
    assert image.mime_type == "image/jpeg"
    overlay = Image.open(io.BytesIO(base64.b64decode(image.data)))
    assert overlay.format == "JPEG"
    assert overlay.size == Image.open(COFFEE_PHOTO).size  # upright, under 1024 a side
    assert [c.type for c in plain.content] == ["text"]


# --- refusals: each a tool error with the message POST /classify gives ---------------------


@pytest.mark.parametrize("name", list(INVALID))
def test_an_invalid_image_is_refused_with_the_rest_api_s_message(
    app: Instance, http: httpx.Client, name: str, tmp_path: Path
) -> None:
    file_name, write, phrase = INVALID[name]
    path = tmp_path / file_name
    write(path)
    message = classify(http, path).json()["error"]
    assert phrase in message
    assert error_text(call(app, image=encoded(path))).endswith(message)


UNSUPPORTED = {
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
    "pdf": b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n",
    "html": b"<!doctype html><img src=x onerror=alert(1)>",
    "zip": b"PK\x03\x04" + bytes(60),
}


@pytest.mark.parametrize("kind", list(UNSUPPORTED))
def test_a_format_off_the_allow_list_is_refused_as_post_classify_refuses_it(
    app: Instance, http: httpx.Client, kind: str
) -> None:
    data = UNSUPPORTED[kind]
    rest = http.post("classify", files={"file": (f"x.{kind}", data)})
    assert rest.status_code == 415
    message = rest.json()["error"]
    assert error_text(call(app, image=base64.b64encode(data).decode())).endswith(message)


def test_base64_over_20_mb_is_a_tool_error_before_it_is_decoded(app: Instance) -> None:
    message = error_text(call(app, image="A" * (MAX_IMAGE_CHARS + 4)))
    assert "over the limit of 20 MB of base64" in message


@pytest.mark.parametrize(
    "text", ["not base64 at all!", "iVBORw0KGgo=?", "QUJD$$$$", "é" * 16, "QUJD\x00REVG"]
)
def test_text_that_is_not_base64_is_a_tool_error(app: Instance, text: str) -> None:
    assert "is not base64" in error_text(call(app, image=text))


# --- URLs: refused in every spelling, and never fetched -----------------------------------


@pytest.fixture(scope="module")
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A port where a fetch would arrive: nothing may ever connect to it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        yield f"127.0.0.1:{server.getsockname()[1]}", server


URL_SPELLINGS = [
    *(f"{scheme}://{{host}}/cat.jpg" for scheme in ("http", "https", "HTTP", "hTtPs", "ftp", "ws")),
    "//{host}/cat.jpg",
    "\\\\{host}\\share\\cat.jpg",
    "  \t\nhttp://{host}/cat.jpg",
    "http:{host}/cat.jpg",
    "http%3A%2F%2F{host}%2Fcat.jpg",
    "\uff48\uff54\uff54\uff50://{host}/cat.jpg",  # full-width letters
    "www.{host}/cat.jpg",
    "gopher://{host}/_GET",
    "s3://bucket/cat.jpg",
    "http://169.254.169.254/latest/meta-data/",
    "file:///etc/passwd",
    "file:/etc/passwd",
    "FILE://localhost/etc/passwd",
    "/etc/passwd",
    "/proc/self/environ",
    "/tmp/gradio/upload.jpg",
    "~/.ssh/id_rsa",
    "C:\\Windows\\win.ini",
    "jar:file:///tmp/x.zip!/cat.jpg",
    "javascript:alert(1)",
    str(CAT_PHOTO),  # a photo that exists, named by its path: not read either
]
"""A URL or a path, as a client might write one to have the server read it; ``{host}`` is
a port where a fetch would arrive."""


@pytest.mark.parametrize("spelling", URL_SPELLINGS)
def test_a_url_or_a_path_in_any_spelling_is_refused_and_never_fetched(
    app: Instance, listener: tuple[str, socket.socket], spelling: str
) -> None:
    host, server = listener
    assert NO_URLS in error_text(call(app, image=spelling.replace("{host}", host)))
    with pytest.raises(BlockingIOError):
        server.accept()  # nobody came


def test_a_data_url_of_anything_but_an_image_is_refused(app: Instance) -> None:
    page = "data:text/html;base64," + base64.b64encode(b"<b>hi</b>").decode()
    assert "data:image/jpeg;base64" in error_text(call(app, image=page))
    assert "data:image/jpeg;base64" in error_text(call(app, image="data:image/png,%89PNG"))


# --- the transport: bounded, POST only -----------------------------------------------------


def test_a_body_over_the_limit_is_a_413_whether_declared_or_streamed(
    http: httpx.Client,
) -> None:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    declared = http.post("mcp", content=b" " * (BODY_LIMIT + 1), headers=headers)
    assert declared.status_code == 413
    assert "20 MB" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:
        for _ in range(BODY_LIMIT // (1024 * 1024) + 2):
            yield b" " * (1024 * 1024)

    streamed = http.post("mcp", content=chunks(), headers=headers)
    assert streamed.status_code == 413


@pytest.mark.slow
def test_large_requests_take_turns_so_their_bodies_stay_within_a_dyno(app: Instance) -> None:
    """Each holds ~5 times its body (the body, its JSON parse, the decoded bytes) before its
    decode reaches the memory budget: 4 at once took 213 MB more, on a 512 MB dyno."""
    text = base64.b64encode(bytes(range(256)) * (MAX_IMAGE_CHARS // 4 * 3 // 256)).decode()
    assert len(text) <= MAX_IMAGE_CHARS

    async def together(client: Client) -> list[CallToolResult]:
        calls = [client.call_tool("classify_image", {"image": text}) for _ in range(4)]
        return await asyncio.gather(*calls)

    call(app, image=text)  # the first large request's one-off costs, out of the way
    app.memory.take_peak()
    idle = app.memory.current
    results = with_client(app, together)
    assert all("not an image" in error_text(result) for result in results)
    assert app.memory.take_peak() - idle < 150 * MB  # one at a time: ~95 MB


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_the_endpoint_takes_post_only(http: httpx.Client, method: str) -> None:
    response = http.request(method, "mcp")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "use POST" in response.json()["error"]


def test_the_page_and_the_api_still_answer_beside_it(http: httpx.Client) -> None:
    assert http.get("").status_code == 200
    assert classify(http, CAT_PHOTO).status_code == 200
    assert "mcp" in http.get("metrics").text  # its classifications are counted


# --- a private app: the same keys as every other route ----------------------------------


def access_entry(command: str, name: str, secret: str, *options: str) -> str:
    """An entry of ``API_KEYS`` or ``USERS``, as ``python -m service.access`` prints it."""
    done = subprocess.run(
        [sys.executable, "-m", "service.access", command, name, *options],
        input=secret,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@dataclass
class Private:
    """The app with ``MCP=on``, a key for everything, a key for metrics only, and a user."""

    app: Instance
    key: str
    metrics_key: str


@pytest.fixture(scope="module")
def private(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    key, metrics_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    api_keys = ",".join(
        [
            access_entry("hash-key", "agent", key),
            access_entry("hash-key", "watcher", metrics_key, "--scopes", "metrics"),
        ]
    )
    users = access_entry("hash-password", "alice", "a password for the test")
    log = tmp_path_factory.mktemp("private") / "app.log"
    with serving(model_path, log, MCP="on", API_KEYS=api_keys, USERS=users) as instance:
        yield Private(instance, key, metrics_key)


def refusals(group: BaseException) -> list[BaseException]:
    """The errors inside the task groups' exception groups."""
    if isinstance(group, BaseExceptionGroup):
        return [error for inner in group.exceptions for error in refusals(inner)]
    return [group]


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_a_private_app_s_tool_answers_a_key(private: Private, mode: str) -> None:
    key = {"Authorization": f"Bearer {private.key}"}
    with httpx.Client(base_url=private.app.url, headers=key) as http:
        counted = metric(http, "classifier_requests_total", route="mcp", caller="agent")
        tools = with_client(private.app, lambda client: client.list_tools(), private.key, mode)
        assert [tool.name for tool in tools.tools] == ["classify_image"]
        result = with_client(
            private.app,
            lambda client: client.call_tool("classify_image", {"image": encoded(CAT_PHOTO)}),
            private.key,
            mode,
        )
        assert not result.is_error
        assert len(result.structured_content["predictions"]) == 5
        # Counted under the key's name (the SDK runs the tool in a task of its own).
        assert metric(http, "classifier_requests_total", route="mcp", caller="agent") == counted + 1


@pytest.mark.parametrize("who", ["nobody", "an unknown key", "a key for metrics only"])
def test_a_private_app_s_tool_refuses_a_caller_without_a_key_for_it(
    private: Private, who: str
) -> None:
    key = {"nobody": None, "an unknown key": secrets.token_urlsafe(32)}.get(
        who, private.metrics_key
    )
    with pytest.raises(BaseExceptionGroup) as refused:
        with_client(private.app, lambda client: client.list_tools(), key)
    assert [type(error) for error in refusals(refused.value)] == [MCPError]
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    response = httpx.post(f"{private.app.url}mcp", json=listing, headers=headers)
    assert response.status_code == (403 if who == "a key for metrics only" else 401)
    assert "key" in response.json()["error"] or "private" in response.json()["error"]


# --- off: no endpoint, no SDK ----------------------------------------------------------------


def test_with_mcp_off_the_endpoint_is_a_404(app_url: str) -> None:
    response = httpx.post(f"{app_url}mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert response.status_code == 404
    assert "error" in response.json()


def sdk_modules_once_built(model_path: Path, mcp: str) -> list[str]:
    """The MCP SDK's modules in a fresh interpreter that builds the app as ``app.py`` does."""
    code = (
        "import json, sys, app\n"
        "from classifier.model import Classifier\n"
        "from service.settings import load_settings\n"
        "settings = load_settings()\n"
        "app.build_app(Classifier(settings.model_path, warm=False), settings)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {SDK_MODULES!r})))\n"
    )
    env = {**os.environ, "MODEL_PATH": str(model_path), "MCP": mcp}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_with_mcp_off_the_sdk_is_never_imported(model_path: Path) -> None:
    assert sdk_modules_once_built(model_path, "off") == []
    assert "mcp.server.mcpserver" in sdk_modules_once_built(model_path, "on")
