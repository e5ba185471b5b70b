"""``POST /classify/batch``: several photos in one form, each answered on its own."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.api import BATCH_FILES
from tests.support.fuzzing import Tally, cases, seed_files, send_batch
from tests.support.harness import classify
from tests.support.photos import CAT_PHOTO, COFFEE_PHOTO


@pytest.fixture(scope="module")
def http(app_url: str) -> httpx.Client:
    with httpx.Client(base_url=app_url, timeout=120) as client:
        yield client


def form(*files: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", file) for file in files]


def photo(path: Path) -> tuple[str, bytes]:
    return path.name, path.read_bytes()


def test_three_photos_and_a_text_file_give_four_results_in_order(
    http: httpx.Client, tmp_path: Path
) -> None:
    gray = tmp_path / "gray.jpg"
    Image.open(CAT_PHOTO).convert("L").save(gray)
    files = form(
        photo(CAT_PHOTO), photo(COFFEE_PHOTO), ("notes.txt", b"not a photo\n"), photo(gray)
    )
    response = http.post("classify/batch", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["file"] for r in results] == ["chelsea.png", "coffee.png", "notes.txt", "gray.jpg"]
    answered = [results[0], results[1], results[3]]
    for result, path in zip(answered, [CAT_PHOTO, COFFEE_PHOTO, gray], strict=True):
        assert set(result) == {"file", "predictions"}
        assert result["predictions"] == classify(http, path).json()["predictions"]
    assert set(results[2]) == {"file", "error"}
    assert "not an image" in results[2]["error"]
    assert response.json()["model"]["name"] == "InceptionV3"


def test_k_and_explain_are_as_on_classify(http: httpx.Client) -> None:
    response = http.post(
        "classify/batch", files=form(photo(CAT_PHOTO)), params={"k": 2, "explain": "true"}
    )
    assert response.status_code == 200
    (result,) = response.json()["results"]
    single = classify(http, CAT_PHOTO, k=2, explain="true").json()
    assert result["predictions"] == single["predictions"]
    assert len(result["predictions"]) == 2
    assert result["overlay"] == single["overlay"]


def test_one_file_too_large_for_the_budget_fails_alone(http: httpx.Client) -> None:
    from tests.support.images import png_declaring

    files = form(("bomb.png", png_declaring(30000, 30000)), photo(CAT_PHOTO))
    results = http.post("classify/batch", files=files).json()["results"]
    assert "too large" in results[0]["error"]
    assert "predictions" in results[1]


@pytest.mark.parametrize(
    ("send", "status", "phrase"),
    [
        ({"files": form(*[photo(CAT_PHOTO)] * (BATCH_FILES + 1))}, 400, f"up to {BATCH_FILES}"),
        ({"files": [("file", photo(CAT_PHOTO))]}, 400, "`files`"),
        ({"content": CAT_PHOTO.read_bytes(), "headers": {"Content-Type": "image/png"}}, 415, ""),
        ({"files": form(("big.png", b"\0" * (21 * 1024 * 1024)))}, 413, "20 MB"),
        ({"files": form(photo(CAT_PHOTO)), "params": {"k": 0}}, 422, "k: "),
    ],
    ids=["too many files", "no field files", "not a form", "over 20 MB in all", "bad k"],
)
def test_the_request_fails_only_when_the_form_does(
    http: httpx.Client, send: dict, status: int, phrase: str
) -> None:
    response = http.post("classify/batch", **send)
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert phrase in response.json()["error"]


def test_a_full_batch_is_taken(http: httpx.Client) -> None:
    response = http.post("classify/batch", files=form(*[photo(COFFEE_PHOTO)] * BATCH_FILES))
    assert response.status_code == 200
    assert len(response.json()["results"]) == BATCH_FILES
    assert all("predictions" in result for result in response.json()["results"])


def test_openapi_documents_the_batch(http: httpx.Client) -> None:
    operation = http.get("openapi.json").json()["paths"]["/classify/batch"]["post"]
    body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"]["maxItems"] == BATCH_FILES
    assert {"200", "400", "413", "415", "422"} <= set(operation["responses"])


@pytest.mark.slow  # a fuzzing run, as tests/test_fuzz.py
@pytest.mark.timeout(300)
def test_mutated_files_in_batches_never_break_the_app(http: httpx.Client) -> None:
    seeds = seed_files(Image.open(CAT_PHOTO))
    assert {"small.heic", "large.heic", "small.avif"} <= set(seeds)
    mutated = list(cases(seeds, 60, seed=3))
    tally = Tally()
    for start in range(0, len(mutated), 4):
        send_batch(http, mutated[start : start + 4], tally)
    assert tally.failures == [], tally.counts
    assert tally.counts["batch 200"] == len(mutated) // 4


def test_gradio_client_classifies_several_photos_and_one_as_before(app_url: str) -> None:
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    gallery, first = client.predict(
        [handle_file(str(COFFEE_PHOTO)), handle_file(str(CAT_PHOTO))], api_name="/predict_many"
    )
    single = client.predict(handle_file(str(COFFEE_PHOTO)), api_name="/predict")
    assert first == single
    assert len(gallery) == 2
    top = single["confidences"][0]
    assert gallery[0]["caption"] == f"{top['label']} {top['confidence']:.0%}"
    assert all(Path(item["image"]).is_file() for item in gallery)
