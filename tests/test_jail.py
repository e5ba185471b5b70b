"""The decoder jail: every upload decoded in a worker process the kernel bounds.

The model's input must come out bit for bit as an in-process decode makes it;
a worker that passes a limit, dies or hangs must cost its own request only
(413 or 422), never the server; and a worker must hold nothing of the
server's (no secrets in its environment, no sockets but its own).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.admission import BusyError, MemoryBudget
from classifier.assets import ROOT
from classifier.jail import (
    INLINE_BYTES,
    PREADMITTED,
    DecoderJail,
    DecodeStoppedError,
    DecodeTimeoutError,
)
from classifier.jail_worker import webp_canvas
from classifier.metadata import Preprocessing
from classifier.options import MB, AdmissionOptions
from classifier.preprocess import (
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_with_photo,
)
from tests.support.harness import wait_for
from tests.support.images import (
    cat,
    gradient,
    save_heic,
    write_bomb,
    write_text_as_jpeg,
    write_truncated_jpeg,
)
from tests.support.photos import EXAMPLES, imagenet_sample_photos

SPEC = Preprocessing()
MAX_PIXELS = 40_000_000
PHOTO_SIDE = 640
ADMISSION = AdmissionOptions()


def budget() -> MemoryBudget:
    return MemoryBudget(ADMISSION.memory_budget_mb * MB, ADMISSION.timeout_s)


@pytest.fixture(scope="module")
def jail() -> Iterator[DecoderJail]:
    jail = DecoderJail(workers=2, timeout_s=ADMISSION.decode_timeout_s, wait_s=10)
    yield jail
    jail.close()


def written(folder: Path) -> list[Path]:
    """The cat in every format the app takes, as editors and phones write them."""
    image = cat()
    files = {
        "cat.jpg": {"quality": 90},
        "cat-progressive.jpg": {"quality": 85, "progressive": True},
        "cat.png": {},
        "cat-interlaced.png": {"optimize": False},
        "cat.gif": {},
        "cat.webp": {"quality": 80},
        "cat.bmp": {},
        "cat.tiff": {"compression": "tiff_lzw"},
        "cat.avif": {"quality": 60},
    }
    paths = []
    for name, options in files.items():
        path = folder / name
        image.save(path, **options)
        paths.append(path)
    heic = folder / "cat.heic"
    save_heic(image, heic)
    rgba = folder / "cat-rgba.png"
    image.convert("RGBA").save(rgba)
    return [*paths, heic, rgba]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("formats")
    return [*sorted(EXAMPLES.glob("*.png")), *written(folder), *imagenet_sample_photos()[:12]]


def in_process(source: object) -> tuple[np.ndarray, np.ndarray]:
    decoded = decode_with_photo(source, SPEC, MAX_PIXELS, photo_side=PHOTO_SIDE)  # type: ignore[arg-type]
    assert decoded.photo is not None
    return np.asarray(decoded.input), np.asarray(decoded.photo)


def jailed(jail: DecoderJail, source: object, admit: Callable | None = None) -> tuple:
    decoded = jail.decode(source, SPEC, MAX_PIXELS, admit or budget().reserve, PHOTO_SIDE)  # type: ignore[arg-type]
    assert decoded.photo is not None
    return decoded.pixels, np.asarray(decoded.photo)


def test_the_model_input_and_photo_are_bit_identical_through_the_jail(
    jail: DecoderJail, photos: list[Path]
) -> None:
    for path in photos:
        expected = in_process(path)
        data = path.read_bytes()
        for source in (path, str(path), data, io.BytesIO(data)):
            pixels, photo = jailed(jail, source)
            assert np.array_equal(pixels, expected[0]), path.name
            assert np.array_equal(photo, expected[1]), path.name


def test_a_large_upload_on_disk_goes_to_the_worker_as_a_file_descriptor(
    jail: DecoderJail, tmp_path: Path
) -> None:
    """What the API spools to disk (past 1 MB) is never read into the server's memory."""
    path = tmp_path / "noise.png"
    noise = np.random.default_rng(0).integers(0, 256, (900, 900, 3), np.uint8)
    Image.fromarray(noise).save(path)
    assert path.stat().st_size > INLINE_BYTES
    with tempfile.SpooledTemporaryFile(max_size=INLINE_BYTES) as spool:
        spool.write(path.read_bytes())
        pixels, photo = jailed(jail, spool)
    expected = in_process(path)
    assert np.array_equal(pixels, expected[0])
    assert np.array_equal(photo, expected[1])


@pytest.mark.parametrize(
    ("write", "error"),
    [
        (write_text_as_jpeg, UnsupportedImageError),
        (write_truncated_jpeg, ImageError),
        (write_bomb, ImageTooLargeError),
    ],
)
def test_refusals_come_back_as_the_users_errors_and_the_worker_stays(
    jail: DecoderJail, tmp_path: Path, write: Callable[[Path], None], error: type
) -> None:
    path = tmp_path / "upload"
    write(path)
    with pytest.raises(error) as in_server:
        in_process(path)
    pids = worker_pids(jail)
    with pytest.raises(error) as through_jail:
        jailed(jail, path)
    assert type(through_jail.value) is type(in_server.value)
    assert str(through_jail.value) == str(in_server.value)
    assert worker_pids(jail) == pids


def worker_pids(jail: DecoderJail) -> set[int]:
    return {worker.pid for worker in list(jail._idle.queue)}


def test_a_decode_past_its_deadline_is_killed_and_answered_422(
    jail: DecoderJail, tmp_path: Path
) -> None:
    """A 12-megapixel PNG takes far longer than a millisecond to decode, on any machine."""
    path = tmp_path / "large.png"
    gradient((4000, 3000)).save(path, compress_level=1)
    pids = worker_pids(jail)
    jail.timeout_s = 0.001
    try:
        with pytest.raises(DecodeTimeoutError) as stopped:
            jailed(jail, path)
    finally:
        jail.timeout_s = ADMISSION.decode_timeout_s
    assert stopped.value.status == 422
    assert worker_pids(jail) != pids, "the killed worker is replaced"
    assert len(worker_pids(jail)) == jail.workers
    assert_decodes(jail, EXAMPLES / "chelsea.png")


def assert_decodes(jail: DecoderJail, path: Path) -> None:
    assert np.array_equal(jailed(jail, path)[0], in_process(path)[0])


def test_a_worker_the_kernel_stops_mid_decode_costs_its_request_a_413(
    jail: DecoderJail, tmp_path: Path
) -> None:
    """The kernel ends a worker past its limits by a signal: here one sent while the
    worker waits to be admitted for a cost above what it was given ahead."""
    path = tmp_path / "two-megapixels.png"
    gradient((1600, 1200)).save(path, compress_level=1)

    def admit_after_a_kill(cost: int) -> AbstractContextManager[object]:
        if cost > PREADMITTED:  # the worker waits for its own cost: it is stopped meanwhile
            for pid in busy_pids(jail):
                os.kill(pid, signal.SIGKILL)
        return budget().reserve(cost)

    with pytest.raises(DecodeStoppedError) as stopped:
        jailed(jail, path, admit_after_a_kill)
    assert stopped.value.status == 413
    assert len(worker_pids(jail)) == jail.workers
    assert_decodes(jail, path)


def busy_pids(jail: DecoderJail) -> set[int]:
    """The workers at work: the zygote's children that are not waiting for a job."""
    assert jail._zygote is not None
    pid = jail._zygote.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(child) for child in children.split()} - worker_pids(jail)


def test_the_kernel_refuses_a_worker_memory_past_its_admitted_cost() -> None:
    """``bounded`` sets RLIMIT_DATA to what was admitted plus the slack: past it,
    allocations fail (Python's ``MemoryError``; a C decoder's ``malloc`` gets NULL)."""
    script = f"""
from classifier.jail_worker import bounded
job = {{"admitted": {32 * MB}, "data_slack": {16 * MB}, "cpu_seconds": 10}}
with bounded(None, job):
    within = bytearray({40 * MB})
    del within
    try:
        bytearray({64 * MB})
        print("allowed")
    except MemoryError:
        print("refused")
bytearray({64 * MB})
print("lifted")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["refused", "lifted"]


def test_a_worker_killed_while_idle_or_the_zygote_killed_is_replaced_unseen(
    jail: DecoderJail,
) -> None:
    for worker in list(jail._idle.queue):
        os.kill(worker.pid, signal.SIGKILL)
    assert_decodes(jail, EXAMPLES / "coffee.png")
    assert jail._zygote is not None
    jail._zygote.kill()
    jail._zygote.wait()
    for worker in list(jail._idle.queue):
        os.kill(worker.pid, signal.SIGKILL)
    assert_decodes(jail, EXAMPLES / "chelsea.png")
    assert len(worker_pids(jail)) == jail.workers


def test_workers_hold_no_secret_and_no_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"DATABASE_URL": "postgres://u:secret@db/x", "METRICS_TOKEN": "t0ken"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    jail = DecoderJail(workers=1, timeout_s=10, wait_s=10)
    with socket_listening() as listener:
        jail.start()
        try:
            assert jail._zygote is not None
            processes = [jail._zygote.pid, *worker_pids(jail)]
            for pid in processes:
                environment = Path(f"/proc/{pid}/environ").read_bytes()
                assert not any(value.encode() in environment for value in secrets.values())
                # The zygote closes its copy of a new worker's socket just after sending it.
                wait_for(lambda pid=pid: len(sockets_of(pid)) == 1)
                inode = os.fstat(listener.fileno()).st_ino
                assert sockets_of(pid) != {f"socket:[{inode}]"}
        finally:
            jail.close()


LIBVIPS_IN_THE_SERVER = """
import sys
from PIL import Image
from classifier.admission import MemoryBudget
from classifier.jail import DecoderJail
from classifier.metadata import Preprocessing

Image.new("RGB", (3000, 2000), "teal").save(sys.argv[1])  # over 4 MP: libvips shrinks it
jail = DecoderJail(workers=1, timeout_s=10, wait_s=10, vips_threads=3)
jail.start()
worker = jail._idle.queue[0].pid
admit = MemoryBudget(1 << 30, 10).reserve
with open(sys.argv[1], "rb") as upload:
    decoded = jail.decode(upload, Preprocessing(), 40_000_000, admit, 640)
assert decoded.pixels[0, 0].tolist() == [0, 128, 128], decoded.pixels[0, 0]
server = "libvips" in open("/proc/self/maps").read() or "pyvips" in sys.modules
in_worker = "libvips" in open(f"/proc/{worker}/maps").read()
print(server, in_worker, open(f"/proc/{worker}/environ").read())
jail.close()
"""


def test_the_server_never_loads_libvips_its_workers_decode_with_it(tmp_path: Path) -> None:
    """libvips costs a process ~10 MB: the server, whose workers decode, keeps it out."""
    result = subprocess.run(
        [sys.executable, "-c", LIBVIPS_IN_THE_SERVER, str(tmp_path / "large.png")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    server, worker, environment = result.stdout.split(" ", 2)
    assert (server, worker) == ("False", "True")
    assert "VIPS_THREADS=3\0" in environment


def sockets_of(pid: int) -> set[str]:
    links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    return {link for link in links if link.startswith("socket:")}


def socket_listening() -> AbstractContextManager:
    """A listening socket of the server's, which no worker may inherit."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


def test_a_request_waits_for_a_free_worker_then_gets_a_503() -> None:
    jail = DecoderJail(workers=1, timeout_s=10, wait_s=0.2)
    held = threading.Event()
    release = threading.Event()

    def holding(cost: int) -> AbstractContextManager[object]:
        if cost > PREADMITTED:
            held.set()
            release.wait(30)
        return budget().reserve(cost)

    try:
        jail.start()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "two-megapixels.png"
            gradient((1600, 1200)).save(path, compress_level=1)
            first = threading.Thread(target=jailed, args=(jail, path, holding))
            first.start()
            assert held.wait(30)
            with pytest.raises(BusyError):
                jailed(jail, EXAMPLES / "chelsea.png")
            release.set()
            first.join(30)
        assert_decodes(jail, EXAMPLES / "chelsea.png")
    finally:
        release.set()
        jail.close()


@pytest.mark.parametrize("lossless", [False, True])
@pytest.mark.parametrize("animated", [False, True])
def test_a_webps_canvas_is_read_from_its_first_bytes(lossless: bool, animated: bool) -> None:
    """VP8, VP8L and VP8X (extended: animated) headers, as Pillow writes them."""
    image = Image.new("RGB", (1234, 567), (10, 20, 30))
    file = io.BytesIO()
    frames = {"save_all": True, "append_images": [image]} if animated else {}
    image.save(file, "WEBP", lossless=lossless, **frames)
    assert webp_canvas(file.getvalue()[:30]) == 1234 * 567
    assert webp_canvas(b"RIFF\0\0\0\0WEBPVP8X") == 0


def test_sigterm_to_every_process_leaves_the_decodes_to_the_server(jail: DecoderJail) -> None:
    """Heroku sends SIGTERM to every process of a dyno: the decoders must outlive it, as
    the server drains, and end when it closes their sockets."""
    assert jail._zygote is not None
    decoders = [jail._zygote.pid, *worker_pids(jail)]
    for pid in decoders:
        os.kill(pid, signal.SIGTERM)
    assert_decodes(jail, EXAMPLES / "chelsea.png")
    assert worker_pids(jail) | {jail._zygote.pid} == set(decoders)
