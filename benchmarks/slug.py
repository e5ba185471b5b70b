"""Slug size: what Heroku would ship, gzip-compressed, ours against the TensorFlow way.

Heroku's Cedar generation counts the compressed tarball of the built app
(at most 500 MB): the installed dependencies, the Python runtime, the
repository files that ``.slugignore`` keeps, and the model. The
dependencies are installed from the lock, ``requirements.txt``, into a
fresh virtual environment, then pruned by ``bin/post_compile`` as Heroku's
buildpack does; the TensorFlow variant installs ``requirements.in`` with
``tensorflow-cpu`` in onnxruntime's place and keeps all else equal.

Fir ships an OCI image for ARM64 instead, whose app layers hold the same
parts: the row "Fir, aarch64" installs the lock's aarch64 wheels (as
``make arm64-root`` does), prunes them with ``bin/post_compile`` as
``project.toml``'s inline buildpack does, and keeps the files its exclude
list keeps. Its layers are gzip-compressed tars too; the Python runtime is
counted as this machine's (x86-64) build, and the run image underneath
(Ubuntu, shared by every app) is not counted.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections import defaultdict
from collections.abc import Callable, Iterable
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

from benchmarks.common import MB, ROOT, models, options, report

TENSORFLOW = "tensorflow-cpu==2.21.0"
VARIANTS = {
    "ours": "onnxruntime (ours)",
    "tensorflow": "tensorflow-cpu",
    "fir": "onnxruntime, Fir (aarch64)",
}
"""``--variant`` names: each installs its dependencies afresh, a minute or more."""
Size = tuple[float, float]
"""(compressed, uncompressed) MB."""


class ByteCounter:
    """A write-only file that only counts bytes: the tarball is never stored."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def compressed_size(files: list[tuple[Path, str]]) -> Size:
    """(compressed, uncompressed) MB of a ``tar czf`` of ``files`` (gzip level 6, as tar's)."""
    counter = ByteCounter()
    raw = 0
    with (
        gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=6, mtime=0) as stream,
        tarfile.open(fileobj=stream, mode="w|") as tar,
    ):
        for path, name in files:
            tar.add(path, arcname=name, recursive=False)
            if path.is_file() and not path.is_symlink():
                raw += path.stat().st_size
    return counter.size / MB, raw / MB


def tree(
    folder: Path, prefix: str, keep: Callable[[Path], bool] = lambda _: True
) -> list[tuple[Path, str]]:
    """Every file and link under ``folder`` whose relative path ``keep`` accepts, as tar entries."""
    return [
        (path, f"{prefix}/{path.relative_to(folder)}")
        for path in sorted(folder.rglob("*"))
        if (path.is_symlink() or path.is_file()) and keep(path.relative_to(folder))
    ]


def dropped_by_slugignore(path: str, patterns: list[str]) -> bool:
    """Whether ``.slugignore`` drops ``path``: gitignore-like, without negation.

    A pattern with a slash inside is anchored at the root; one without
    matches a file or folder name anywhere.
    """
    candidates = [PurePosixPath(path), *PurePosixPath(path).parents][:-1]
    for pattern in patterns:
        body = pattern.strip("/")
        for candidate in candidates:
            if fnmatch(str(candidate) if "/" in body else candidate.name, body):
                return True
    return False


def slugignore_patterns() -> list[str]:
    lines = (ROOT / ".slugignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def fir_exclude_patterns() -> list[str]:
    project = tomllib.loads((ROOT / "project.toml").read_text())
    return project["io"]["buildpacks"]["exclude"]


def app_files(patterns: list[str]) -> list[tuple[Path, str]]:
    """The committed files the build keeps (Heroku builds from git), under ``app/``.

    ``patterns`` are what the build leaves out (``.slugignore``, or Fir's
    exclude list). Committed models and their metadata are left out: each
    row adds the one model it is about.
    """
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    committed_models = {
        str(PurePosixPath(name).with_suffix(suffix))
        for name in listed
        if name.endswith(".onnx")
        for suffix in (".onnx", ".json")
    }
    return [
        (ROOT / name, f"app/{name}")
        for name in listed
        if name not in committed_models
        and not dropped_by_slugignore(name, patterns)
        and (ROOT / name).is_file()
    ]


def model_files(model: Path) -> list[tuple[Path, str]]:
    """A model and its metadata, where the app expects them."""
    return [(path, f"app/models/{path.name}") for path in (model, model.with_suffix(".json"))]


def post_compile(site: Path) -> None:
    """Prune ``site`` with the app's own build hook, as both generations run it."""
    environment = {**os.environ, "SITE_PACKAGES": str(site)}
    subprocess.run([ROOT / "bin" / "post_compile"], env=environment, check=True)


def install(requirements: Path, folder: Path) -> list[tuple[Path, str]]:
    """A fresh venv with ``requirements`` installed from the registry, as tar entries."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    print(f"installing {requirements.name} into a fresh venv ...", flush=True)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--no-input", "-r"]
    done = subprocess.run([*pip, requirements], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: pip failed:\n{done.stdout}\n{done.stderr}")
    site = next((venv / "lib").glob("python3*/site-packages"))
    post_compile(site)
    return tree(venv, "app/.heroku/python")


def install_aarch64(requirements: Path, folder: Path) -> list[tuple[Path, str]]:
    """The lock's aarch64 wheels, pruned, as Fir's venv layer holds them."""
    site = folder / "site-packages"
    print(f"installing {requirements.name} for aarch64 ...", flush=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    command = [sys.executable, "-m", "uv", "pip", "install", "--quiet", "--require-hashes"]
    command += ["--target", site, "--python-platform", "aarch64-manylinux_2_28"]
    command += ["--python-version", version, "-r", requirements]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: uv failed:\n{done.stderr}")
    post_compile(site)
    return tree(site, f"layers/heroku_python/venv/lib/python{version}/site-packages")


def in_heroku_runtime(relative: Path) -> bool:
    """Whether Heroku's own Python build ships this stdlib file.

    Its build script (heroku-buildpack-python, builds/build_python_runtime.sh)
    leaves out tests, static libraries and the -O / -OO bytecode.
    """
    dropped_folders = {"site-packages", "test", "tests", "idle_test"}
    return not (
        dropped_folders.intersection(relative.parts)
        or relative.name.endswith((".a", ".opt-1.pyc", ".opt-2.pyc"))
    )


def python_runtime() -> list[tuple[Path, str]]:
    """The interpreter and its standard library, as Heroku ships them: equal for both."""
    base = Path(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    binaries = [
        (path, f"python/{path.relative_to(base)}")
        for path in [base / "bin" / version, *(base / "lib").glob(f"lib{version}*.so*")]
        if path.is_file()
    ]
    return binaries + tree(base / "lib" / version, f"python/lib/{version}", in_heroku_runtime)


def packages(entries: list[tuple[Path, str]]) -> dict[str, list[tuple[Path, str]]]:
    """A venv's entries grouped by package: the top name in site-packages, without suffixes.

    ``numpy/``, ``numpy.libs/`` and ``numpy-2.4.6.dist-info/`` all count as numpy.
    """
    groups: dict[str, list[tuple[Path, str]]] = defaultdict(list)
    for path, name in entries:
        parts = PurePosixPath(name).parts
        inside = parts[parts.index("site-packages") + 1 :] if "site-packages" in parts else ()
        key = re.split(r"[-.]", inside[0])[0].lower() if inside else "(venv)"
        groups[key].append((path, name))
    return groups


def total(sizes: Iterable[Size]) -> Size:
    sizes = list(sizes)
    return sum(size[0] for size in sizes), sum(size[1] for size in sizes)


def main() -> None:
    arguments = options(__doc__.splitlines()[0])
    arguments.add_argument("--top", type=int, default=8, help="largest packages listed")
    arguments.add_argument(
        "--variant",
        action="append",
        choices=list(VARIANTS),
        help="measure only this dependency set; repeatable (default: all)",
    )
    args = arguments.parse_args()
    paths = models(args)
    unlocked = (ROOT / "requirements.in").read_text().splitlines()
    python = compressed_size(python_runtime())
    cedar, fir = (
        compressed_size(app_files(slugignore_patterns())),
        compressed_size(app_files(fir_exclude_patterns())),
    )
    dependencies: dict[str, tuple[Size, Size]] = {}
    largest: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="slug-") as folder:
        tensorflow = Path(folder) / "tensorflow.txt"
        tensorflow.write_text(
            "\n".join(TENSORFLOW if line.startswith("onnxruntime") else line for line in unlocked)
        )
        variants = {
            "ours": (install, ROOT / "requirements.txt", cedar),
            "tensorflow": (install, tensorflow, cedar),
            "fir": (install_aarch64, ROOT / "requirements.txt", fir),
        }
        for chosen in args.variant or list(VARIANTS):
            variant, (installer, requirements, app) = VARIANTS[chosen], variants[chosen]
            venv_folder = Path(folder) / re.sub(r"\W+", "-", variant)
            venv_folder.mkdir()
            groups = packages(installer(requirements, venv_folder))
            sizes = {key: compressed_size(entries) for key, entries in groups.items()}
            dependencies[variant] = (total(sizes.values()), app)
            ranked = sorted(sizes.items(), key=lambda item: item[1][0], reverse=True)
            largest += [
                {"dependencies": variant, "name": key, "MB": size[0], "uncompressed_MB": size[1]}
                for key, size in ranked[: args.top]
            ]
    rows: list[dict[str, Any]] = []
    for model in paths:
        model_size = compressed_size(model_files(model))
        for variant, (deps, app) in dependencies.items():
            slug = total([deps, python, app, model_size])
            rows.append(
                {
                    "model": model.name,
                    "dependencies": variant,
                    "deps_MB": deps[0],
                    "python_MB": python[0],
                    "app_MB": app[0],
                    "model_MB": model_size[0],
                    "slug_MB": slug[0],
                    "uncompressed_MB": slug[1],
                }
            )
    tables = {
        "Compressed slug (tar.gz, gzip level 6), MB": rows,
        f"The {args.top} largest top-level names in site-packages, compressed MB": largest,
    }
    report(args, "slug", tables)


if __name__ == "__main__":
    main()
