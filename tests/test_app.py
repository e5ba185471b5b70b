"""The app over HTTP, as a real client and as Heroku starts it."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from classifier.assets import ROOT
from classifier.model import Classifier
from tests.support.images import INVALID, VALID
from tests.support.photos import CAT_PHOTO


@pytest.fixture(scope="module")
def client(app_url: str) -> Client:
    return Client(app_url, verbose=False)


def predict(client: Client, path: Path) -> dict:
    return client.predict(handle_file(str(path)), api_name="/predict")


def assert_top5(result: dict) -> list[tuple[str, float]]:
    pairs = [(entry["label"], entry["confidence"]) for entry in result["confidences"]]
    assert len(pairs) == 5
    confidences = [confidence for _, confidence in pairs]
    assert all(0.0 <= confidence <= 1.0 for confidence in confidences)
    assert confidences == sorted(confidences, reverse=True)
    assert result["label"] == pairs[0][0]
    return pairs


def test_cat_photo_over_http_matches_the_python_api(client: Client, model_path: Path) -> None:
    pairs = assert_top5(predict(client, CAT_PHOTO))
    expected = Classifier(model_path).classify(CAT_PHOTO)
    assert [label for label, _ in pairs] == [p.label for p in expected]
    for (_, confidence), prediction in zip(pairs, expected, strict=True):
        assert confidence == pytest.approx(prediction.probability, rel=1e-5)


def test_procfile_binds_all_interfaces_on_port(app_url: str) -> None:
    port = urllib.parse.urlsplit(app_url).port
    listening = {
        connection.laddr
        for connection in psutil.net_connections("tcp")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
    }
    assert listening == {("0.0.0.0", port)}
    with urllib.request.urlopen(app_url, timeout=10) as response:
        page = response.read().decode()
    assert response.status == 200
    assert "InceptionV3 image classifier" in page


def test_predict_and_predict_many_are_the_public_endpoints(client: Client) -> None:
    assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == [
        "/predict",
        "/predict_many",
    ]


def test_page_says_the_weights_are_random(app_url: str) -> None:
    with urllib.request.urlopen(f"{app_url}config", timeout=10) as response:
        config = response.read().decode()
    assert "random test weights" in config


@pytest.mark.parametrize("name", VALID)
def test_odd_images_get_a_prediction(name: str, client: Client, tmp_path: Path) -> None:
    file_name, write = VALID[name]
    path = tmp_path / file_name
    write(path)
    assert_top5(predict(client, path))


@pytest.mark.parametrize("name", INVALID)
def test_bad_uploads_get_a_clear_message_and_the_server_lives_on(
    name: str, client: Client, tmp_path: Path
) -> None:
    file_name, write, phrase = INVALID[name]
    path = tmp_path / file_name
    write(path)
    with pytest.raises(AppError, match=phrase):
        predict(client, path)
    assert_top5(predict(client, CAT_PHOTO))


def server_process(app_url: str) -> psutil.Process:
    """The process listening at ``app_url``."""
    port = urllib.parse.urlsplit(app_url).port
    (pid,) = {
        connection.pid
        for connection in psutil.net_connections("tcp")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
    }
    return psutil.Process(pid)


def test_serving_the_page_never_imports_pandas(client: Client, app_url: str) -> None:
    """Gradio imports pandas eagerly; the app defers it, and the page never needs it (32 MB)."""
    assert_top5(predict(client, CAT_PHOTO))
    mapped = {Path(region.path).name for region in server_process(app_url).memory_maps()}
    assert any(name.startswith("onnxruntime") for name in mapped)  # the check can see libraries
    assert not any("pandas" in name for name in mapped)


def test_onnx_runtime_records_nothing_to_send_to_microsoft(app_url: str) -> None:
    """ONNX Runtime 1.31 records every session it creates in an SQLite file it keeps open
    (~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db) and sends the records
    to Microsoft; a deployment of the app reports nothing on its own."""
    opened = {Path(file.path).name for file in server_process(app_url).open_files()}
    assert opened  # the check can see files (the log, the model's labels...)
    assert "onnxruntime.db" not in opened


def test_an_idle_server_sleeps(app_url: str) -> None:
    """Gradio's queue polls every 1 ms unless told otherwise: ~1,000 wake-ups a second.

    The page's queue polls every 5 ms and its progress loop every 100 ms;
    with uvicorn's own tick that is ~220 a second, counted by the kernel.
    """
    server = server_process(app_url)
    before = server.num_ctx_switches().voluntary
    time.sleep(2)
    assert (server.num_ctx_switches().voluntary - before) / 2 < 400


def test_missing_model_exits_with_one_clear_line(tmp_path: Path) -> None:
    from tests.support.harness import procfile_command

    result = subprocess.run(
        ["bash", "-c", procfile_command()],
        cwd=ROOT,
        env={
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "PORT": "8",
            "MODEL_PATH": str(tmp_path / "missing.onnx"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 6  # ModelError.exit_code, as convert_model.py's
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: Model file {tmp_path / 'missing.onnx'} not found: "
        "run `python convert_model.py` (see the README) to create it."
    ]


def test_a_failed_warm_up_ends_the_process_so_heroku_restarts_it(
    model_path: Path, tmp_path: Path
) -> None:
    """A model that loads but cannot run (its metadata says 300 x 300, it takes 299 x 299)."""
    import json
    import os

    from tests.support.harness import launch, stop

    for file in model_path.parent.iterdir():
        os.link(file, tmp_path / file.name)
    metadata_path = tmp_path / model_path.with_suffix(".json").name
    metadata = json.loads(metadata_path.read_text())
    metadata["preprocessing"].update(height=300, width=300)
    metadata_path.unlink()  # a linked file: write a new one
    metadata_path.write_text(json.dumps(metadata))
    instance = launch(tmp_path / model_path.name, tmp_path / "app.log")
    try:
        code = instance.process.wait(timeout=90)
    finally:
        stop(instance)
    log = instance.log.read_text()
    assert code == 6, log
    assert "The model's first run failed" in log
    assert "Traceback" in log


def test_libvips_progress_stays_out_of_the_log(tmp_path: Path) -> None:
    """A large PNG goes through libvips, whose own INFO lines pyvips relays to logging."""
    from PIL import Image

    large = tmp_path / "large.png"
    Image.new("RGB", (2500, 2000), (90, 120, 150)).save(large)
    code = (
        "import sys\n"
        "from service.request_id import configure_logging\n"
        "configure_logging()\n"
        "from classifier.metadata import Preprocessing\n"
        "from classifier.preprocess import preprocess\n"
        "preprocess(sys.argv[1], Preprocessing())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(large)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "VIPS:" not in result.stderr
