"""Memory: hostile ~40-megapixel uploads decoded within what admission reserves.

Each decode runs in a fresh interpreter, which reports its peak RSS growth
beside the cost ``decode_cost`` estimated from the header. The peak is the
process's own high-water mark, ``VmHWM``: ``getrusage``'s ``ru_maxrss``
would start at the size of the (large) pytest process that spawned it,
which Linux carries over across ``exec``. The estimate is what the memory
budget holds for a decode, so it must not be exceeded, and every kind here
must fit the default budget (134 MB), because all of them are inside the
app's promise (20 MB, 40 megapixels).
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from benchmarks.common import burst
from classifier.admission import MemoryBudget
from classifier.assets import ROOT
from classifier.jail import DecoderJail
from classifier.metadata import Preprocessing
from classifier.options import MB, AdmissionOptions
from tests.support.budgets import uploads_timeout
from tests.support.harness import serving
from tests.support.hostile import ATTACKS, hostile_files
from tests.support.images import LARGE, write_large_images
from tests.support.photos import CAT_PHOTO
from tests.support.postgres import postgres_cluster

MEASURE = """
import json, re, sys
from pathlib import Path
from classifier.assets import EXAMPLE_PHOTOS
from classifier.metadata import Preprocessing
from classifier.preprocess import decode_cost, open_image, preprocess
def peak():
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024
spec = Preprocessing()
preprocess(EXAMPLE_PHOTOS[0], spec)  # libraries loaded and warm before the baseline
before = peak()
preprocess(sys.argv[1], spec)
growth = peak() - before
print(json.dumps({"growth": growth, "cost": decode_cost(open_image(sys.argv[1]), sys.argv[1])}))
"""
BUDGET = AdmissionOptions().memory_budget_mb * MB


@pytest.fixture(scope="module")
def large_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = write_large_images(tmp_path_factory.mktemp("large"))
    return dict(zip(LARGE, paths, strict=True))


def printed_by(script: str, *arguments: str, setup: str = "") -> str:
    """What ``script`` prints, run in a fresh interpreter (after the shell lines ``setup``)."""
    command = f'{setup} exec "$0" -c "$1" "${{@:2}}"'
    result = subprocess.run(
        ["bash", "-c", command, sys.executable, script, *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def decode_in_fresh_process(path: Path) -> dict[str, int]:
    return json.loads(printed_by(MEASURE, str(path)))


@pytest.mark.parametrize("kind", LARGE)
def test_large_upload_decodes_within_its_reservation(
    kind: str, large_images: dict[str, Path]
) -> None:
    measured = decode_in_fresh_process(large_images[kind])
    assert measured["growth"] <= measured["cost"], (
        f"{kind}: grew {measured['growth'] / MB:.0f} MB, reserved {measured['cost'] / MB:.0f} MB"
    )
    assert measured["cost"] <= BUDGET


def test_every_large_kind_decodes_in_the_jail_within_the_kernels_limits(
    large_images: dict[str, Path],
) -> None:
    """The kernel's limit on a worker (its admitted cost, the slack and what a decoder
    reserves untouched) refuses no upload the app promises to take, photo included."""
    jail = DecoderJail(1, timeout_s=120, wait_s=120)
    budget = MemoryBudget(BUDGET, timeout=120)
    try:
        for kind, path in large_images.items():
            decoded = jail.decode(path, Preprocessing(), 40_000_000, budget.reserve, 1024)
            assert decoded.photo is not None, kind
            assert max(decoded.photo.size) <= 1024, kind
    finally:
        jail.close()


def test_the_old_full_size_decode_would_not_fit(large_images: dict[str, Path]) -> None:
    """The check bites: decoding the RGBA PNG in full, as before, grows far past the budget."""
    script = MEASURE.replace(
        "preprocess(sys.argv[1], spec)", "Image.open(sys.argv[1]).convert('RGB')"
    )
    script = "from PIL import Image\n" + script
    assert json.loads(printed_by(script, str(large_images["rgba png"])))["growth"] > BUDGET


FAULTS = """
import resource, sys
from classifier.assets import EXAMPLE_PHOTOS
from classifier.model import Classifier
classifier = Classifier(sys.argv[1])
for _ in range(3):
    classifier.classify(EXAMPLE_PHOTOS[0])
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    classifier.classify(EXAMPLE_PHOTOS[0])
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def page_faults_per_classification(model_path: Path, **env: str) -> float:
    """In the environment ``setup.sh`` gives the app on Heroku (``env`` overriding it)."""
    settings = " ".join(f"{name}={value}" for name, value in env.items())
    return float(printed_by(FAULTS, str(model_path), setup=f"source setup.sh && {settings}"))


def test_an_ordinary_photo_reuses_the_heap(model_path: Path) -> None:
    """With ``setup.sh``'s malloc settings a photo's buffers are reused, not mapped afresh.

    Every page fault maps and zeroes 4 kB; at glibc's 128 kB threshold a
    451 x 300 photo took ~770 of them a classification, 3 to 10 ms.
    """
    assert page_faults_per_classification(model_path) < 50
    assert page_faults_per_classification(model_path, MALLOC_MMAP_THRESHOLD_="131072") > 300


ARENA = """
import re, sys
from pathlib import Path
from classifier.assets import EXAMPLE_PHOTOS
from classifier.heap import release_freed_memory
from classifier.model import Classifier
def resident():
    release_freed_memory()
    return int(re.search(r"VmRSS:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
classifier = Classifier(sys.argv[1])
classifier.classify(EXAMPLE_PHOTOS[0])
if sys.argv[2] == "never settle":
    classifier._settling = None
before = resident()
classifier.classify_batch(EXAMPLE_PHOTOS[:1] * 4)
print((resident() - before) * 1024)
"""


def arena_growth_after_a_batch(model_path: Path, mode: str) -> int:
    return int(printed_by(ARENA, str(model_path), mode))


def test_a_batch_leaves_no_memory_behind(model_path: Path) -> None:
    """ONNX Runtime's arena keeps a batch's activations (float32: ~8 MB an image) unless settled."""
    assert arena_growth_after_a_batch(model_path, "settle") < 8 * MB
    assert arena_growth_after_a_batch(model_path, "never settle") > 20 * MB


def test_the_photo_kept_for_overlays_decodes_within_its_reservation(
    large_images: dict[str, Path],
) -> None:
    """``decode_with_photo`` reads the orientation from the header alone: Pillow's
    ``getexif`` on a PNG decodes all of it first (a 40 MP RGBA PNG: ~760 MB)."""
    script = MEASURE.replace(
        "preprocess(sys.argv[1], spec)\ngrowth",
        "decode_with_photo(sys.argv[1], spec, photo_side=1024)\ngrowth",
    ).replace("import decode_cost,", "import decode_cost, decode_with_photo,")
    for kind in ("rgba png", "progressive jpeg"):
        measured = json.loads(printed_by(script, str(large_images[kind])))
        assert measured["growth"] <= measured["cost"] + 3 * 1024 * 1024, kind


HOSTILE_CLIENTS = 8
TREE_PEAK_BAR = 450 * MB
"""The app's whole process tree under the hostile burst: inside a 512 MB dyno with room."""


@pytest.mark.parametrize(
    ("protocol", "store"), [("rest", "sqlite"), ("rest", "postgresql"), ("page", "sqlite")]
)
@uploads_timeout(HOSTILE_CLIENTS * len(LARGE))
def test_the_hostile_burst_is_all_classified_within_450_mb(
    protocol: str, store: str, model_path: Path, large_images: dict[str, Path], tmp_path: Path
) -> None:
    """8 clients at once, each uploading a ~40-megapixel image of every kind, once a
    correction has loaded the feedback store (SQLite's or PostgreSQL's driver): every one
    classified, and the server, the zygote and the decoder workers together stay under
    450 MB."""
    uploads = HOSTILE_CLIENTS * len(LARGE)
    with ExitStack() as stack:
        database = {"FEEDBACK_DB": str(tmp_path / "feedback.sqlite3")}
        if store == "postgresql":
            database = {"DATABASE_URL": stack.enter_context(postgres_cluster()).url()}
        instance = stack.enter_context(serving(model_path, tmp_path / "app.log", **database))
        corrected = httpx.post(
            f"{instance.url}feedback",
            files={"file": CAT_PHOTO.read_bytes()},
            data={"label": "tabby"},
            timeout=60,
        )
        assert corrected.status_code == 201, corrected.text
        instance.memory.take_peak()
        result = burst(
            instance.url, list(large_images.values()), uploads, HOSTILE_CLIENTS, 3600, protocol
        )
        peak = instance.memory.take_peak()
    assert result.errors == []
    assert len(result.latencies) == uploads
    assert peak < TREE_PEAK_BAR, f"{peak / MB:.0f} MB: {instance.memory.peak_processes}"


GENERATED_ATTACKS = 3 * len(ATTACKS)


@uploads_timeout(GENERATED_ATTACKS)
def test_generated_hostile_files_are_refused_or_classified_within_450_mb(
    model_path: Path, tmp_path: Path
) -> None:
    """Every attack of ``tests.support.hostile`` three times (seeded), 8 clients at once
    over REST: each answered as the user's fault or classified, never a 5xx, and the
    server with its decoders under 450 MB."""
    files = list(hostile_files(seed=29, count=GENERATED_ATTACKS))
    with serving(model_path, tmp_path / "app.log") as instance:
        instance.memory.take_peak()

        def send(named: tuple[str, bytes]) -> tuple[str, int]:
            with httpx.Client(base_url=instance.url, timeout=600) as client:
                answer = client.post("classify", files={"file": ("upload", named[1])})
            return named[0], answer.status_code

        with ThreadPoolExecutor(HOSTILE_CLIENTS) as pool:
            statuses = dict(pool.map(send, files))
        peak = instance.memory.take_peak()
    assert {name: status for name, status in statuses.items() if status >= 500} == {}
    assert set(statuses.values()) <= {200, 400, 413, 415, 422}
    assert peak < TREE_PEAK_BAR, f"{peak / MB:.0f} MB"
