"""The MCP tool's cost: what the SDK adds to the slug, and the app's memory with ``MCP`` off and on.

Size: the installed distributions that only the MCP SDK brings (the
dependency closure of ``requirements.in`` less that of the same list without
``mcp``), their files as each one's ``RECORD`` lists them in this venv,
compressed as ``benchmarks.slug`` compresses a slug (an OCI image's layer is
the same kind of tarball). Memory: the app launched by the harness as the
Procfile runs it, ``MCP=off`` then ``MCP=on``: resident after warm-up, after
listing the tool and classifying the cat photo through it, and the peak of
one call carrying the largest image the tool takes (20 MB of base64).
"""

from __future__ import annotations

import asyncio
import base64
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from benchmarks.common import MB, ROOT, app_options, models, report, serving
from benchmarks.slug import compressed_size
from tests.support.photos import CAT_PHOTO

SDK = "mcp"
LARGEST_IMAGE_CHARS = 20 * 1024 * 1024


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[Requirement]) -> set[str]:
    """Every distribution ``roots`` need here, with their extras, markers evaluated."""
    found: set[str] = set()
    pending = [(canonical(root.name), frozenset(root.extras)) for root in roots]
    while pending:
        name, extras = pending.pop()
        if name in found:
            continue
        found.add(name)
        for text in metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in extras or {""}
            )
            if wanted:
                pending.append((canonical(requirement.name), frozenset(requirement.extras)))
    return found


def sdk_share() -> list[dict[str, Any]]:
    """One row per distribution only the SDK brings, and their total."""
    lines = (ROOT / "requirements.in").read_text().splitlines()
    roots = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    only_sdk = closure(roots) - closure([r for r in roots if canonical(r.name) != SDK])
    rows = []
    for name in sorted(only_sdk):
        distribution = metadata.distribution(name)
        files = [Path(str(distribution.locate_file(f))) for f in distribution.files or []]
        entries = [(path, f"site-packages/{path.name}") for path in files if path.is_file()]
        compressed, installed = compressed_size(entries)
        rows.append({"package": name, "installed_MB": installed, "compressed_MB": compressed})
    rows.append(
        {
            "package": "all of them",
            "installed_MB": sum(row["installed_MB"] for row in rows),
            "compressed_MB": sum(row["compressed_MB"] for row in rows),
        }
    )
    return rows


async def tool_calls(url: str, image: str) -> None:
    from mcp import Client

    async with Client(f"{url}mcp") as client:
        await client.list_tools()
        answer = await client.call_tool("classify_image", {"image": image})
        if answer.is_error:
            raise RuntimeError(f"classify_image failed: {answer.content}")


async def largest_call(url: str) -> None:
    from mcp import Client

    text = base64.b64encode(bytes(LARGEST_IMAGE_CHARS // 4 * 3)).decode()
    async with Client(f"{url}mcp") as client:
        await client.call_tool("classify_image", {"image": text})  # not an image: refused


def memory(model: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="agents-") as folder:
        for setting in ("on", "off"):
            log = Path(folder) / f"mcp-{setting}.log"
            with serving(model, log, env={**env, "MCP": setting}) as server:
                row: dict[str, Any] = {"MCP": setting, "idle_MB": server.memory.current / MB}
                if setting == "on":
                    asyncio.run(
                        tool_calls(server.url, base64.b64encode(CAT_PHOTO.read_bytes()).decode())
                    )
                    row["after_a_call_MB"] = server.memory.current / MB
                    server.memory.take_peak()
                    asyncio.run(largest_call(server.url))
                    row["20_MB_call_peak_MB"] = server.memory.take_peak() / MB
                    row["after_it_MB"] = server.memory.current / MB
                rows.append(row)
    return rows


def main() -> None:
    arguments = app_options(__doc__.splitlines()[0])
    args = arguments.parse_args()
    model = models(args)[0]
    tables = {
        "Distributions only the MCP SDK brings (this venv, x86-64), MB": sdk_share(),
        f"The app's memory ({model.name}), MB": memory(model, dict(args.env)),
    }
    report(args, "agents", tables)


if __name__ == "__main__":
    main()
