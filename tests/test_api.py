"""The REST API over HTTP, as curl and scripts call it, on the app the Procfile starts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from classifier.model import Classifier
from tests.support.budgets import uploads_timeout
from tests.support.harness import (
    Instance,
    classify,
    launch,
    metric,
    stop,
    wait_for,
    wait_until_ready,
)
from tests.support.images import INVALID, LARGE, write_large_images, write_large_rgba_png
from tests.support.photos import CAT_PHOTO, COFFEE_PHOTO

STATUS = {
    "text named .jpg": 415,
    "truncated jpeg": 400,
    "zero bytes": 415,
    "decompression bomb": 413,
}


@pytest.fixture(scope="module")
def http(app_url: str) -> httpx.Client:
    with httpx.Client(base_url=app_url, timeout=120) as client:
        yield client


def test_photo_gives_the_python_apis_top_5(http: httpx.Client, model_path: Path) -> None:
    response = classify(http, CAT_PHOTO)
    assert response.status_code == 200
    body = response.json()
    classifier = Classifier(model_path)
    expected = classifier.classify(CAT_PHOTO)
    assert [p["index"] for p in body["predictions"]] == [p.index for p in expected]
    assert [p["label"] for p in body["predictions"]] == [p.label for p in expected]
    for answered, prediction in zip(body["predictions"], expected, strict=True):
        assert answered["probability"] == pytest.approx(prediction.probability, rel=1e-5)
    model = classifier.metadata
    assert body["model"] == {
        "name": model.name,
        "precision": "float32",
        "sha256": model.sha256,
    }


def test_raw_body_is_accepted_as_curl_data_binary_sends_it(http: httpx.Client) -> None:
    raw = http.post(
        "classify", content=COFFEE_PHOTO.read_bytes(), headers={"Content-Type": "image/png"}
    )
    assert raw.status_code == 200
    assert raw.json()["predictions"] == classify(http, COFFEE_PHOTO).json()["predictions"]


@pytest.mark.parametrize(("k", "count"), [(1, 1), (5, 5), (1000, 1000)])
def test_k_sets_how_many_classes(http: httpx.Client, k: int, count: int) -> None:
    predictions = classify(http, CAT_PHOTO, k=k).json()["predictions"]
    assert len(predictions) == count
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)


@pytest.mark.parametrize("k", ["0", "1001", "many"])
def test_bad_k_is_a_422_with_a_message(http: httpx.Client, k: str) -> None:
    response = classify(http, CAT_PHOTO, k=k)
    assert response.status_code == 422
    assert response.json()["error"].startswith("k: ")


@pytest.mark.parametrize("name", INVALID)
def test_bad_uploads_get_their_4xx_and_a_message(
    name: str, http: httpx.Client, tmp_path: Path
) -> None:
    file_name, write, phrase = INVALID[name]
    path = tmp_path / file_name
    write(path)
    response = classify(http, path)
    assert response.status_code == STATUS[name]
    assert phrase in response.json()["error"]
    assert classify(http, CAT_PHOTO).status_code == 200


def test_no_file_field_is_a_400(http: httpx.Client) -> None:
    response = http.post("classify", files={"photo": ("a.png", CAT_PHOTO.read_bytes())})
    assert response.status_code == 400
    assert "`file`" in response.json()["error"]


def test_a_body_that_is_not_an_image_type_is_a_415(http: httpx.Client) -> None:
    response = http.post("classify", content=b"hello", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert "text/plain" in response.json()["error"]


def test_a_file_over_20_mb_is_a_413(http: httpx.Client) -> None:
    response = http.post(
        "classify", content=b"\0" * (21 * 1024 * 1024), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 413
    assert "20 MB" in response.json()["error"]


def test_health_and_readiness(http: httpx.Client) -> None:
    assert http.get("healthz").json() == {"status": "ok"}
    ready = http.get("readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["model"]["name"] == "InceptionV3"


def test_metrics_count_rest_and_page_requests(http: httpx.Client, app_url: str) -> None:
    rest_before = metric(http, "classifier_requests_total", route="classify", outcome="ok")
    page_before = metric(http, "classifier_requests_total", route="page", outcome="ok")
    decodes_before = metric(http, "classifier_decode_seconds_count")
    classify(http, CAT_PHOTO)
    Client(app_url, verbose=False).predict(handle_file(str(CAT_PHOTO)), api_name="/predict")
    assert metric(http, "classifier_requests_total", route="classify", outcome="ok") == (
        rest_before + 1
    )
    assert metric(http, "classifier_requests_total", route="page", outcome="ok") == page_before + 1
    assert metric(http, "classifier_decode_seconds_count") == decodes_before + 2
    assert metric(http, "classifier_model_info", name="InceptionV3", precision="float32") == 1
    assert metric(http, "classifier_memory_budget_bytes") == 134 * 1024 * 1024
    assert metric(http, "classifier_requests_in_flight") == 0


def test_openapi_documents_classify(http: httpx.Client) -> None:
    spec = http.get("openapi.json").json()
    operation = spec["paths"]["/classify"]["post"]
    assert set(operation["requestBody"]["content"]) == {"multipart/form-data", "image/*"}
    assert {"200", "400", "413", "415", "422", "503"} <= set(operation["responses"])
    assert "ClassificationOut" in spec["components"]["schemas"]
    assert http.get("docs").status_code == 200


@pytest.mark.slow  # a stress run: 96 uploads of ~40 megapixels, over a minute
@uploads_timeout(8 * len(LARGE))
def test_concurrent_large_uploads_are_all_classified(
    http: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """8 clients at once, each sending one ~40-megapixel image of every kind."""
    paths = write_large_images(tmp_path_factory.mktemp("large"))

    def client_sends_every_kind(_: int) -> list[int]:
        with httpx.Client(base_url=str(http.base_url), timeout=120) as own:
            return [classify(own, path).status_code for path in paths]

    with ThreadPoolExecutor(8) as pool:
        statuses = [status for run in pool.map(client_sends_every_kind, range(8)) for status in run]
    assert statuses == [200] * (8 * len(LARGE))
    assert classify(http, CAT_PHOTO).status_code == 200


# --- saturation and shutdown, each on an instance of its own ----------------


def tight_instance(model_path: Path, folder: Path) -> Instance:
    """An instance whose budget holds one large decode at a time, waiting at most 1 s."""
    return launch(model_path, folder / "app.log", MEMORY_BUDGET_MB="110", ADMISSION_TIMEOUT="1")


@pytest.mark.slow  # an app of its own, saturated until its admission timeout
def test_saturated_server_answers_503_with_retry_after(model_path: Path, tmp_path: Path) -> None:
    large = tmp_path / "rgba.png"
    write_large_rgba_png(large)
    instance = tight_instance(model_path, tmp_path)
    try:
        wait_until_ready(instance)
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: post_to(instance, large), range(8)))
        busy = [r for r in responses if r.status_code == 503]
        assert busy, [r.status_code for r in responses]
        assert {r.status_code for r in responses} == {200, 503}
        assert all(int(r.headers["Retry-After"]) >= 1 for r in busy)
        assert "try again" in busy[0].json()["error"]
        assert post_to(instance, CAT_PHOTO).status_code == 200
    finally:
        stop(instance)


def post_to(instance: Instance, path: Path) -> httpx.Response:
    with httpx.Client(base_url=instance.url, timeout=120) as client:
        return classify(client, path)


@pytest.mark.slow  # an app of its own, drained under load
def test_sigterm_lets_requests_under_way_finish_and_exits_0(
    model_path: Path, tmp_path: Path
) -> None:
    large = tmp_path / "rgba.png"
    write_large_rgba_png(large)
    instance = launch(model_path, tmp_path / "app.log", MEMORY_BUDGET_MB="110")
    wait_until_ready(instance)
    with ThreadPoolExecutor(4) as pool:
        under_way = [pool.submit(post_to, instance, large) for _ in range(4)]
        with httpx.Client(base_url=instance.url) as watcher:
            wait_for(
                lambda: metric(watcher, "classifier_requests_in_flight") >= len(under_way),
                timeout=60,
                every=0.01,
            )
        terminated = threading.Thread(target=stop, args=(instance,))
        terminated.start()
        time.sleep(0.2)
        late = post_to(instance, CAT_PHOTO)
        statuses = [request.result().status_code for request in under_way]
        terminated.join()
    assert statuses == [200] * 4
    assert late.status_code == 503
    assert late.headers["Retry-After"] == "1"
    assert instance.process.returncode == 0
    assert "draining" in instance.log.read_text()


def test_readyz_is_503_until_warm_up(model_path: Path) -> None:
    """In process: the API over a classifier not yet warmed up."""
    from service.api import build_api

    classifier = Classifier(model_path, warm=False)
    with TestClient(build_api(classifier)) as client:
        assert client.get("readyz").status_code == 503
        assert client.get("healthz").status_code == 200
        classifier.warm_up()
        assert client.get("readyz").status_code == 200


# --- one shape for every error -------------------------------------------------


def assert_error(response: httpx.Response, status: int) -> str:
    """The answer is ``status`` with ``{"error": message}`` and nothing else; the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}, body
    assert response.headers["x-request-id"]
    return body["error"]


def test_an_unknown_path_is_a_404_in_the_error_shape(http: httpx.Client) -> None:
    assert "POST /classify" in assert_error(http.get("no/such/page"), 404)


def test_a_wrong_method_is_a_405_with_allow(http: httpx.Client) -> None:
    response = http.get("classify")
    assert "use POST" in assert_error(response, 405)
    assert response.headers["allow"] == "POST"


def test_the_page_protocol_keeps_gradios_shape(http: httpx.Client) -> None:
    """Gradio's client reads ``detail`` from its own endpoints' errors."""
    assert "detail" in http.get("gradio_api/no-such-endpoint").json()


@pytest.mark.parametrize(
    ("name", "content", "content_type"),
    [
        (
            "two files",
            b"--b\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\nx\r\n"
            b"--b\r\nContent-Disposition: form-data; name=file; filename=b.png\r\n\r\ny\r\n"
            b"--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
        ("broken multipart", b"--b\r\ngarbage\r\n\r\n", "multipart/form-data; boundary=b"),
        ("no boundary", b"--b\r\n\r\n", "multipart/form-data"),
    ],
)
def test_malformed_forms_are_a_400_in_the_error_shape(
    http: httpx.Client, name: str, content: bytes, content_type: str
) -> None:
    response = http.post("classify", content=content, headers={"Content-Type": content_type})
    assert "multipart form field `file`" in assert_error(response, 400)


def test_the_routers_request_id_is_answered_back(http: httpx.Client) -> None:
    response = classify(http, CAT_PHOTO, k=0)
    assert len(response.headers["x-request-id"]) == 32  # a new one
    echoed = http.get("healthz", headers={"X-Request-ID": "f00d-1234"})
    assert echoed.headers["x-request-id"] == "f00d-1234"
    assert http.get("no/such", headers={"X-Request-ID": "f00d-5"}).headers["x-request-id"] == (
        "f00d-5"
    )


LIBRARY_WORDS = (
    "decoder",
    "bomb",
    "DOS",
    "Truncated File Read",
    "not processed",
    "raw mode",
    "Errno",
    "libpng",
    "vips",
)


def write_truncated_large_png(path: Path) -> None:
    """A 5-megapixel PNG cut short: libvips streams it, and fails on its own words."""
    from tests.support.images import gradient

    full = path.with_name("full.png")
    gradient((2500, 2000)).save(full)
    path.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("decompression bomb", INVALID["decompression bomb"][1]),
        ("truncated jpeg", INVALID["truncated jpeg"][1]),
        ("truncated large png", write_truncated_large_png),
    ],
)
def test_messages_hold_no_library_words_and_no_paths(
    http: httpx.Client, app_url: str, tmp_path: Path, name: str, write
) -> None:
    path = tmp_path / "upload-name.png"
    write(path)
    response = classify(http, path)
    with pytest.raises(AppError) as raised:
        Client(app_url, verbose=False).predict(handle_file(str(path)), api_name="/predict")
    for said in (response.json()["error"], str(raised.value)):
        assert not any(word.lower() in said.lower() for word in LIBRARY_WORDS), said
        assert "/" not in said, said
        assert "upload-name" not in said, said
    assert_error(response, 413 if "bomb" in name else 400)


# --- in process: failures the app must never have, forced ----------------------


@pytest.fixture(scope="module")
def api(model_path: Path) -> FastAPI:
    from service.api import build_api

    return build_api(Classifier(model_path))


@pytest.fixture(scope="module")
def in_process(api: FastAPI) -> Iterator[TestClient]:
    with TestClient(api, raise_server_exceptions=False) as client:
        yield client


def test_a_bug_is_a_500_with_the_request_id_logged_and_counted(
    in_process: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A programming error inside the decode path is the server's fault, not the file's."""
    from classifier import preprocess
    from service.request_id import RequestIdFilter

    def broken_to_rgb(image: object) -> object:
        return np.zeros(3).reshape(2, 2)  # ValueError, as a numpy bug raises

    monkeypatch.setattr(preprocess, "to_rgb", broken_to_rgb)
    caplog.handler.addFilter(RequestIdFilter())
    errors_before = metric(
        in_process, "classifier_requests_total", route="classify", outcome="error"
    )
    response = classify(in_process, CAT_PHOTO)
    request_id = response.headers["x-request-id"]
    assert assert_error(response, 500) == f"Internal error (request {request_id})."
    assert metric(in_process, "classifier_requests_total", route="classify", outcome="error") == (
        errors_before + 1
    )
    assert metric(in_process, "classifier_unexpected_errors_total") >= 1
    (logged,) = [r for r in caplog.records if r.exc_info and r.levelname == "ERROR"]
    assert logged.request_id == request_id
    assert "reshape" in str(logged.exc_info[1])


def chunked_form(size: int, chunk: int = 64 * 1024) -> tuple[AsyncIterator[bytes], list[int]]:
    """A form with one file of ``size`` bytes, sent chunk by chunk; and how much was taken."""
    taken = [0]

    async def chunks() -> AsyncIterator[bytes]:
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for piece in (head, *(b"\0" * chunk for _ in range(size // chunk)), b"\r\n--b--\r\n"):
            taken[0] += len(piece)
            yield piece

    return chunks(), taken


@pytest.mark.parametrize("multipart", [True, False], ids=["multipart", "raw"])
def test_a_60_mb_chunked_upload_is_refused_after_the_limit(api: FastAPI, multipart: bool) -> None:
    """No Content-Length: the body is counted as it comes, and no more than ~21 MB is read.

    httpx's ASGI transport hands the app each chunk only when the app asks for it, so
    ``taken`` is exactly what the app read (and so at most what reached the parser or disk).
    """
    body, taken = chunked_form(60 * 1024 * 1024)
    content_type = "multipart/form-data; boundary=b" if multipart else "image/png"

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.post(
                "/classify", content=body, headers={"Content-Type": content_type}
            )

    response = asyncio.run(post())
    assert "20 MB" in assert_error(response, 413)
    assert taken[0] <= 21 * 1024 * 1024
