"""Two instances behind HAProxy, as ``heroku ps:scale web=2`` puts them behind the router.

Without session affinity every request may land on either instance: the REST
API must answer each one whole. Gradio's page protocol needs its requests on
one instance, so it works with Heroku's affinity cookie.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

from classifier.model import Classifier
from tests.support.harness import AFFINITY_COOKIE, Balancer, balanced, classify, metric
from tests.support.photos import CAT_PHOTO, COFFEE_PHOTO, imagenet_sample_photos

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(),
    reason="HAProxy is not installed (.ci/run installs Debian's haproxy)",
)


@pytest.fixture(scope="module")
def round_robin(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    with balanced(model_path, tmp_path_factory.mktemp("round-robin")) as balancer:
        yield balancer


def test_every_rest_request_is_answered_as_the_python_api_does(
    round_robin: Balancer, model_path: Path
) -> None:
    try:
        photos = [CAT_PHOTO, COFFEE_PHOTO, *imagenet_sample_photos()[:18]]
    except pytest.skip.Exception:
        photos = [CAT_PHOTO, COFFEE_PHOTO] * 10
    classifier = Classifier(model_path)
    served_before = [served(instance.url) for instance in round_robin.instances]
    with httpx.Client(base_url=round_robin.url, timeout=60) as http:
        for photo in photos:
            response = classify(http, photo)
            assert response.status_code == 200, response.text
            expected = [p.index for p in classifier.classify(photo)]
            assert [p["index"] for p in response.json()["predictions"]] == expected, photo
    served_now = [served(instance.url) for instance in round_robin.instances]
    shares = [now - before for now, before in zip(served_now, served_before, strict=True)]
    assert sum(shares) == len(photos)
    assert all(share >= len(photos) // 4 for share in shares), shares


def served(url: str) -> float:
    with httpx.Client(base_url=url) as http:
        return metric(http, "classifier_requests_total", route="classify", outcome="ok")


def test_bad_input_gets_its_4xx_through_the_balancer(round_robin: Balancer) -> None:
    with httpx.Client(base_url=round_robin.url, timeout=60) as http:
        for _ in range(4):
            response = http.post(
                "classify", content=b"not a photo", headers={"Content-Type": "image/jpeg"}
            )
            assert response.status_code == 415
            assert "not an image" in response.json()["error"]


@pytest.mark.slow
def test_page_protocol_works_with_heroku_affinity_cookie(model_path: Path, tmp_path: Path) -> None:
    with balanced(model_path, tmp_path, affinity=True) as balancer:
        client = Client(balancer.url, verbose=False)
        for _ in range(4):
            result = client.predict(handle_file(str(CAT_PHOTO)), api_name="/predict")
            assert len(result["confidences"]) == 5
        assert AFFINITY_COOKIE in client.cookies
